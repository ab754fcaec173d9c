export type DeltaCoalescerOptions = {
  /** The longest a character waits before it is emitted. @default 50 */
  maxDelayMs?: number;
  /** The most characters in one emitted delta; a full buffer is emitted at once. @default 512 */
  maxChars?: number;
  /** Receives each coalesced delta, in order. */
  emit(text: string): void;
};

export type DeltaCoalescer = {
  /** Adds streamed text. */
  push(text: string): void;
  /** Emits whatever is buffered now (the end of the stream). */
  flush(): void;
  /** Drops the buffer and the timer without emitting (the stream was abandoned). */
  discard(): void;
};

/**
 * Coalesces a model's text deltas into `message.delta` events (DESIGN §4 step 2): a delta goes
 * out at most `maxDelayMs` after its first character arrived, or as soon as `maxChars` are
 * buffered, so a fast model does not publish one event per token and a slow one is not held back.
 */
export function createDeltaCoalescer(options: DeltaCoalescerOptions): DeltaCoalescer {
  const maxDelayMs = options.maxDelayMs ?? 50;
  const maxChars = options.maxChars ?? 512;
  let buffer = '';
  let timer: ReturnType<typeof setTimeout> | undefined;

  function clearTimer() {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
  }

  function flush() {
    clearTimer();
    if (buffer.length === 0) return;
    const text = buffer;
    buffer = '';
    options.emit(text);
  }

  return {
    push(text) {
      if (text.length === 0) return;
      buffer += text;
      while (buffer.length >= maxChars) {
        const cut = splitPoint(buffer, maxChars);
        const head = buffer.slice(0, cut);
        buffer = buffer.slice(cut);
        options.emit(head);
      }
      if (buffer.length === 0) clearTimer();
      else if (timer === undefined) timer = setTimeout(flush, maxDelayMs);
    },
    flush,
    discard() {
      clearTimer();
      buffer = '';
    },
  };
}

/** `maxChars`, or one less so that a UTF-16 surrogate pair is never split across two deltas. */
function splitPoint(text: string, maxChars: number): number {
  const last = text.charCodeAt(maxChars - 1);
  return last >= 0xd800 && last <= 0xdbff && maxChars > 1 ? maxChars - 1 : maxChars;
}
