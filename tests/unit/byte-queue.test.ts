// The byte FIFO under the incremental parsers: any split of the input, any sequence of takes,
// peeks and skips returns the bytes in order.
import { expect, test } from "bun:test";
import { Buffer } from "node:buffer";
import { ByteQueue } from "../../core/byte-queue.ts";

test("takes, peeks and skips across arbitrary chunk boundaries", () => {
  let seed = 7;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  for (let round = 0; round < 300; round++) {
    const data = Buffer.alloc(2000 + rnd(3000));
    for (let i = 0; i < data.length; i++) data[i] = rnd(256);
    const q = new ByteQueue();
    let fed = 0, read = 0;
    const got: Buffer[] = [];
    while (read < data.length) {
      if (fed < data.length && (q.length === 0 || rnd(2))) {
        const n = Math.min(data.length - fed, rnd(300));
        q.push(data.subarray(fed, fed + n));
        fed += n;
        continue;
      }
      const n = rnd(q.length + 1);
      const op = rnd(3);
      if (op === 0) {
        expect(q.peek(n)).toEqual(data.subarray(read, read + n));
        got.push(q.take(n));
      } else if (op === 1) {
        got.push(q.take(n));
      } else {
        q.skip(n);
        got.push(data.subarray(read, read + n));
      }
      read += n;
      expect(q.length).toBe(fed - read);
    }
    expect(Buffer.concat(got)).toEqual(data);
  }
  const q = new ByteQueue();
  expect(q.peek(0).length).toBe(0);
  expect(() => q.take(1)).toThrow(RangeError);
});
