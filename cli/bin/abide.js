#!/usr/bin/env node
// The `abide` command. Needs Node 24 (type stripping): `npx abide` puts the workspace's Node first on PATH.
import { main } from '../src/main.ts';

const code = await main(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  interactive: Boolean(process.stdin.isTTY && process.stderr.isTTY),
});
process.exitCode = code;
