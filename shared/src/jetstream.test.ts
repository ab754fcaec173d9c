import type { JetStreamClient } from '@nats-io/jetstream';
import { RequestError, TimeoutError } from '@nats-io/transport-node';
import { describe, expect, it } from 'vitest';
import { publishRetrying } from './jetstream.ts';

/** A JetStream client whose publishes fail with `failures` in turn, then succeed; it records each attempt's options. */
function fakeJs(failures: Error[]) {
  const attempts: { subject: string; msgID: string | undefined }[] = [];
  const js = {
    async publish(subject: string, _data: Uint8Array, options: { msgID?: string }) {
      attempts.push({ subject, msgID: options.msgID });
      const failure = failures.shift();
      if (failure) throw failure;
      return { stream: 'RUN_INBOX', seq: 7, duplicate: false };
    },
  } as unknown as JetStreamClient;
  return { js, attempts };
}

describe('publishRetrying', () => {
  it('sends again with the same Nats-Msg-Id while a publish times out or finds no stream leader (an election)', async () => {
    const noResponders = Object.assign(new Error('jetstream is not enabled'), { cause: new RequestError('no responders', { cause: new Error('503') }) });
    (noResponders.cause as RequestError).isNoResponders = () => true;
    const { js, attempts } = fakeJs([new TimeoutError(), noResponders, new TimeoutError()]);
    const ack = await publishRetrying(js, 'run.in.run_a.start', new Uint8Array(), 'run_a:1:0');
    expect(ack.seq).toBe(7);
    expect(attempts).toHaveLength(4);
    expect(new Set(attempts.map((attempt) => attempt.msgID))).toEqual(new Set(['run_a:1:0']));
  });

  it('does not retry an error that a retry cannot fix', async () => {
    const { js, attempts } = fakeJs([new Error('maximum payload exceeded')]);
    await expect(publishRetrying(js, 'run.in.run_a.start', new Uint8Array(), 'run_a:1:0')).rejects.toThrow('maximum payload exceeded');
    expect(attempts).toHaveLength(1);
  });
});
