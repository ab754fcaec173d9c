/** Something long-lived to close on shutdown: an SSE stream or a WebSocket. */
export type LiveConnection = { close(): void };

/**
 * The open SSE streams and WebSockets of the process, with the number of event subscriptions
 * they hold: read by `/metrics`, closed all at once on shutdown.
 */
export function createLiveConnections() {
  const streams = new Set<LiveConnection>();
  const sockets = new Set<LiveConnection>();
  let subscriptions = 0;
  let closing = false;
  return {
    get closing() {
      return closing;
    },
    addStream(connection: LiveConnection): () => void {
      streams.add(connection);
      return () => streams.delete(connection);
    },
    addSocket(connection: LiveConnection): () => void {
      sockets.add(connection);
      return () => sockets.delete(connection);
    },
    /** Counts an active event subscription; call the returned function when it ends. */
    subscriptionStarted(): () => void {
      subscriptions += 1;
      let ended = false;
      return () => {
        if (ended) return;
        ended = true;
        subscriptions -= 1;
      };
    },
    counts() {
      return { sseStreams: streams.size, websockets: sockets.size, subscriptions };
    },
    /** Closes every stream and socket (WebSockets with 1001); new ones are refused from now on. */
    closeAll(): void {
      closing = true;
      for (const connection of [...streams, ...sockets]) connection.close();
    },
  };
}
export type LiveConnections = ReturnType<typeof createLiveConnections>;
