import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from './harness/service-process.ts';
import { buildConsole } from '../../console/build.ts';
import { Stack } from './harness/stack.ts';

/** Issue 12: the web console, driven in headless Chromium against the real stack. */
const keyA = 'console-tenant-a-key-0001';
const keyB = 'console-tenant-b-key-0002';
export const outputDirectory = join(repoRoot, 'integration-tests', 'output');

const echoSchema = { type: 'object', properties: { text: { type: 'string' } }, required: ['text'], additionalProperties: false };

describe('web console', () => {
  let stack: Stack;
  let browser: Browser;

  beforeAll(async () => {
    mkdirSync(outputDirectory, { recursive: true });
    // The gateway serves console/dist, built from the sources (it is not committed).
    await buildConsole();
    stack = await Stack.start({ apiKeys: `${keyA}:tenant-a,${keyB}:tenant-b` });
    const put = await stack.api(keyA, 'PUT', '/v1/agents/approver', {
      system: 'Echo after approval.',
      model: {
        provider: 'scripted',
        steps: [{ text: 'Let me echo that.', toolCalls: [{ toolName: 'echo', args: { text: 'hello' } }] }, { text: 'All done: the echo came back.' }],
        chunkSize: 4,
      },
      tools: [{ name: 'echo', kind: 'builtin', description: 'Echoes its input', needsApproval: true, inputSchema: echoSchema }],
    });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium' });
  });

  afterAll(async () => {
    await browser?.close();
    await stack?.stop();
  });

  /** A fresh browser profile whose page errors (console errors, uncaught exceptions) are collected. */
  async function openConsole(viewport = { width: 1280, height: 900 }): Promise<{ context: BrowserContext; page: Page; errors: string[] }> {
    const context = await browser.newContext({ viewport });
    const page = await context.newPage();
    const errors: string[] = [];
    page.on('console', (message) => {
      if (message.type() === 'error') errors.push(`${message.text()} @ ${message.location().url}`);
    });
    page.on('pageerror', (error) => errors.push(`uncaught: ${error.message}`));
    await page.goto(`${stack.gatewayUrl}/console`);
    return { context, page, errors };
  }

  /** Signs in with the keyboard only: the key field has focus, Enter submits. */
  async function signIn(page: Page, key: string): Promise<void> {
    await expect.poll(() => page.locator(':focus').getAttribute('name')).toBe('apiKey');
    await page.keyboard.type(key);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Runs' }).waitFor();
  }

  it('signs in, starts a run that suspends live, approves it from the inbox with edited args, and shows it complete', async () => {
    const { context, page, errors } = await openConsole();
    try {
      await signIn(page, keyA);
      // The key is in session storage, never in the URL.
      expect(await page.evaluate("sessionStorage.getItem('abide.apiKey')")).toBe(keyA);
      expect(page.url()).not.toContain(keyA);

      await page.getByLabel('Agent').fill('approver');
      await page.getByLabel('Input').fill('Please echo hello');
      await page.getByRole('button', { name: 'Start' }).click();
      await page.waitForURL(/#\/runs\/run_/);
      const runId = decodeURIComponent(new URL(page.url()).hash.replace('#/runs/', ''));

      // Live: the status turns to suspended and the approval appears inline, from WebSocket events.
      await page.getByTestId('run-status').filter({ hasText: 'suspended' }).waitFor({ timeout: 60_000 });
      await expect.poll(() => page.getByTestId('model-text').first().textContent()).toBe('Let me echo that.');
      await page.getByTestId('approval-card').waitFor();

      // The inbox: arguments that break the tool's schema are refused before anything is sent.
      await page.getByRole('link', { name: 'Approvals' }).click();
      const card = page.getByTestId('approval-card').filter({ hasText: runId });
      await card.waitFor();
      await card.getByRole('button', { name: 'Edit arguments' }).click();
      await card.getByLabel(/Arguments/).fill('{ "text": 5 }');
      await card.getByRole('button', { name: 'Approve with these arguments' }).click();
      await card.getByRole('alert').filter({ hasText: '/text' }).waitFor();
      expect((await stack.api(keyA, 'GET', `/v1/runs/${runId}`)).body.status).toBe('suspended');
      await card.getByLabel(/Arguments/).fill('{ "text": "edited by a human" }');
      await card.getByRole('button', { name: 'Approve with these arguments' }).click();
      await card.getByText('Approved (accepted)').waitFor();

      // Back to the run: it completes with its output and the tool result of the edited call.
      await page.goto(`${stack.gatewayUrl}/console#/runs/${encodeURIComponent(runId)}`);
      await page.getByTestId('run-status').filter({ hasText: 'completed' }).waitFor({ timeout: 60_000 });
      await expect.poll(() => page.getByTestId('run-output').textContent()).toContain('All done: the echo came back.');
      expect(await page.getByTestId('tool-result').textContent()).toContain('edited by a human');
      await page.getByTestId('usage').waitFor();
      await page.screenshot({ path: join(outputDirectory, 'console-run-view.png'), fullPage: true });

      // The history: every transition, from the API endpoint added for it.
      await page.getByRole('link', { name: 'History' }).click();
      await page.getByRole('heading', { name: /History of/ }).waitFor();
      const history = await stack.api(keyA, 'GET', `/v1/runs/${runId}/history`);
      const versions = history.body.transitions.map((transition: { version: number }) => String(transition.version));
      expect(versions.length).toBeGreaterThanOrEqual(4);
      await expect.poll(() => page.locator('table.history tbody tr td:first-child').allTextContents()).toEqual(versions);

      // The runs list shows it, and stays readable at a phone's width.
      await page.getByRole('link', { name: 'Runs' }).click();
      await page.locator(`tr[data-run-id="${runId}"]`).filter({ hasText: 'completed' }).waitFor();
      await page.setViewportSize({ width: 390, height: 844 });
      expect(await page.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(390);
      await page.goto(`${stack.gatewayUrl}/console#/runs/${encodeURIComponent(runId)}`);
      await page.getByTestId('run-output').waitFor();
      await page.screenshot({ path: join(outputDirectory, 'console-run-view-phone.png'), fullPage: true });

      expect(errors).toEqual([]);
    } finally {
      await context.close();
    }
  });

  it('keeps following a run across a dropped WebSocket (the gateway restarts), from the last seq', async () => {
    const created = await stack.api(keyA, 'POST', '/v1/runs', { agentId: 'approver', input: 'survive a restart' });
    const runId = created.body.runId as string;
    const { context, page, errors } = await openConsole();
    try {
      await signIn(page, keyA);
      await page.goto(`${stack.gatewayUrl}/console#/runs/${encodeURIComponent(runId)}`);
      await page.getByTestId('run-status').filter({ hasText: 'suspended' }).waitFor({ timeout: 60_000 });
      await page.getByTestId('approval-card').waitFor();
      await stack.service('gateway').restart();
      await page.getByText('live: open').waitFor({ timeout: 30_000 });
      expect((await stack.api(keyA, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true })).status).toBe(202);
      await page.getByTestId('run-status').filter({ hasText: 'completed' }).waitFor({ timeout: 60_000 });
      // Resumed, not replayed: each step's text and the tool call appear once.
      expect(await page.getByTestId('model-text').allTextContents()).toEqual(['Let me echo that.', 'All done: the echo came back.']);
      expect(await page.getByTestId('tool-result').count()).toBe(1);
      // While the gateway restarts the browser logs its failed reconnects (and a refresh of the run
      // that raced the restart: refused; reset, when it went out on a keep-alive connection the
      // stopping gateway closed as idle at that moment; or 503 while draining or connecting);
      // nothing else may appear.
      const restartNoise = [/WebSocket connection to 'ws:\/\/[^']+\/v1\/ws' failed/, /^Failed to load resource: (net::ERR_CONNECTION_REFUSED|net::ERR_CONNECTION_RESET|the server responded with a status of 503 .*) @ http:\/\/[^/]+\/v1\/runs\//];
      expect(errors.filter((error) => !restartNoise.some((pattern) => pattern.test(error)))).toEqual([]);
    } finally {
      await context.close();
    }
  });

  it("shows a second tenant none of the first tenant's runs or approvals", async () => {
    const created = await stack.api(keyA, 'POST', '/v1/runs', { agentId: 'approver', input: 'suspend for tenant a' });
    expect(created.status).toBe(201);
    const runId = created.body.runId as string;
    await expect.poll(async () => (await stack.api(keyA, 'GET', '/v1/approvals')).body.approvals.length, { timeout: 60_000 }).toBeGreaterThan(0);

    const { context, page, errors } = await openConsole();
    try {
      await signIn(page, keyB);
      await page.getByTestId('no-runs').waitFor();
      expect(await page.locator('table.runs tbody tr').count()).toBe(0);
      await page.getByRole('link', { name: 'Approvals' }).click();
      await page.getByTestId('no-approvals').waitFor();
      expect(await page.getByTestId('approval-card').count()).toBe(0);
      // Even with the run's id in hand: not found, exactly like a run that does not exist.
      await page.goto(`${stack.gatewayUrl}/console#/runs/${encodeURIComponent(runId)}`);
      await page.getByRole('alert').filter({ hasText: 'run_not_found' }).first().waitFor();
      expect(await page.getByTestId('approval-card').count()).toBe(0);
      // The only errors are the browser's own notes of the refused request for that run.
      expect(errors.filter((error) => !/Failed to load resource: the server responded with a status of 404/.test(error))).toEqual([]);
    } finally {
      await context.close();
      await stack.api(keyA, 'POST', `/v1/runs/${runId}/cancel`, {});
    }
  });
});
