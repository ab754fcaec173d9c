import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

const lazyModule = new URL('./lazy-mcp-tools.ts', import.meta.url).href;

describe('lazy MCP tools', () => {
  it('load the MCP SDK at the first call, not when built, and then answer as the tools do', () => {
    // In a fresh process, so that nothing else has loaded the SDK; every module load is recorded.
    const script = `
      import { registerHooks } from 'node:module';
      const loaded = [];
      registerHooks({ load(url, context, next) { loaded.push(url); return next(url, context); } });
      const sdkLoaded = () => loaded.some((url) => url.includes('/@modelcontextprotocol/sdk/'));
      const { createLazyMcpTools } = await import(${JSON.stringify(lazyModule)});
      const { EgressDeniedError } = await import('@abide/shared');
      const refused = new EgressDeniedError('http://mcp.example:80', 'TOOL_EGRESS_ALLOW');
      const egress = { assertUrlAllowed() { throw refused; }, fetch: globalThis.fetch };
      const tools = createLazyMcpTools({ egress, secrets: {}, pool: {}, stdioServers: {} });
      const built = sdkLoaded();
      const outcome = await tools.list('t1', { url: 'http://mcp.example/mcp' }).then(() => 'listed', (error) => error.code ?? error.message);
      process.stdout.write(JSON.stringify({ built, called: sdkLoaded(), outcome }));
    `;
    const result = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', cwd: new URL('.', import.meta.url).pathname }));
    expect(result.built).toBe(false);
    expect(result.called).toBe(true);
    // The real tools/list ran: the egress refusal is mapped to its code.
    expect(result.outcome).toBe('egress_denied');
  });
});
