// A task that runs one at a time: asking for a run while one is going makes exactly one more run
// right after it (the asks in between collapse into it). The drivers' event pumps are this.
export class Coalesced {
  private running = false;
  private again = false;

  constructor(private readonly body: () => Promise<void>) {}

  /** Resolves when this ask has been served (by this run or by the one it queued). */
  async run(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      do {
        this.again = false;
        await this.body();
      } while (this.again);
    } finally {
      this.running = false;
    }
  }
}
