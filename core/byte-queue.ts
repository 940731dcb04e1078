// The byte FIFO under every incremental parser (sheep frames, NBD, the backup stream): chunks go
// in as they arrive and come out as whole fields, copied only when a field spans chunks.
import { Buffer } from "node:buffer";

/** FIFO of received chunks; take() copies only when a read spans chunks. */
export class ByteQueue {
  private bufs: Buffer[] = [];
  private first = 0; // index of the first live chunk in bufs
  private head = 0; // offset into bufs[first]
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.bufs.push(b);
    this.length += b.length;
  }

  take(n: number): Buffer {
    if (n > this.length) throw new RangeError("ByteQueue underflow");
    if (n === 0) return Buffer.alloc(0);
    const b0 = this.bufs[this.first];
    if (b0.length - this.head >= n) {
      const out = b0.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const b = this.bufs[this.first];
      const k = Math.min(n - filled, b.length - this.head);
      b.copy(out, filled, this.head, this.head + k);
      filled += k;
      this.advance(k);
    }
    return out;
  }

  /** The first n bytes without consuming them (n <= length). */
  peek(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const b0 = this.bufs[this.first];
    if (b0.length - this.head >= n) return b0.subarray(this.head, this.head + n);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    for (let i = this.first, off = this.head; filled < n; i++, off = 0) {
      const b = this.bufs[i];
      const k = Math.min(n - filled, b.length - off);
      b.copy(out, filled, off, off + k);
      filled += k;
    }
    return out;
  }

  skip(n: number): void {
    while (n > 0) {
      const k = Math.min(n, this.bufs[this.first].length - this.head);
      this.advance(k);
      n -= k;
    }
  }

  private advance(k: number): void {
    this.head += k;
    this.length -= k;
    if (this.head === this.bufs[this.first].length) {
      this.first++;
      this.head = 0;
      if (this.first === this.bufs.length) {
        this.bufs = [];
        this.first = 0;
      } else if (this.first >= 1024 && this.first * 2 >= this.bufs.length) {
        this.bufs = this.bufs.slice(this.first);
        this.first = 0;
      }
    }
  }
}
