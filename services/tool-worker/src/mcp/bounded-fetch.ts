/**
 * A `fetch` whose response bodies are cut off after `maxBytes` (issue 13): the MCP SDK reads a
 * response (JSON or an SSE stream) whole, so without a bound a hostile server could make the
 * worker buffer without limit. Past the bound the body stream errors; the SDK then fails the
 * request (a retryable failure) or drops the stream.
 */
export function boundedFetch(inner: typeof globalThis.fetch, maxBytes: number): typeof globalThis.fetch {
  return async (input, init) => {
    const response = await inner(input, init);
    if (!response.body) return response;
    let seen = 0;
    const limited = response.body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          seen += chunk.byteLength;
          if (seen > maxBytes) controller.error(new ResponseTooLargeError(`the MCP server's response is larger than ${maxBytes} bytes`));
          else controller.enqueue(chunk);
        },
      }),
    );
    return new Response(limited, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
}

export class ResponseTooLargeError extends Error {
  override readonly name = 'ResponseTooLargeError';
}
