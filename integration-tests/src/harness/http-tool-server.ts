import { createServer, type IncomingMessage, type Server } from 'node:http';

export type RecordedCall = { path: string; idempotencyKey: string | undefined; headers: IncomingMessage['headers']; body: unknown };

/** An HTTP tool served by the test: records every call and answers with `respond`. */
export async function startHttpToolServer(respond: (call: RecordedCall) => { status?: number; body: unknown } = (call) => ({ body: { received: call.body } })) {
  const calls: RecordedCall[] = [];
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const call: RecordedCall = {
        path: request.url ?? '/',
        idempotencyKey: request.headers['idempotency-key'] as string | undefined,
        headers: request.headers,
        body: text ? JSON.parse(text) : undefined,
      };
      calls.push(call);
      const answer = respond(call);
      response.writeHead(answer.status ?? 200, { 'content-type': 'application/json' }).end(JSON.stringify(answer.body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
