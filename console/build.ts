import { build } from 'esbuild';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Builds the console into `outDirectory` (default `console/dist`): one JavaScript and one CSS
 * bundle with content hashes in their names, and an `index.html` naming them, with no inline
 * script or style (the gateway's Content-Security-Policy forbids both). The output is
 * deterministic (paths relative to `console/`, whatever the caller's cwd).
 */
export async function buildConsole(outDirectory = fileURLToPath(new URL('./dist/', import.meta.url))): Promise<string[]> {
  rmSync(outDirectory, { recursive: true, force: true });
  mkdirSync(join(outDirectory, 'assets'), { recursive: true });
  const result = await build({
    entryPoints: { app: fileURLToPath(new URL('./src/main.tsx', import.meta.url)) },
    // Paths (and so the content hashes) are relative to this directory, whatever the caller's cwd.
    absWorkingDir: fileURLToPath(new URL('.', import.meta.url)),
    bundle: true,
    minify: true,
    format: 'esm',
    target: ['chrome120', 'firefox120'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    entryNames: '[name]-[hash]',
    outdir: join(outDirectory, 'assets'),
    legalComments: 'none',
    metafile: true,
    logLevel: 'warning',
  });
  const outputs = Object.keys(result.metafile.outputs).map((path) => basename(path));
  const script = outputs.find((name) => name.endsWith('.js'));
  const style = outputs.find((name) => name.endsWith('.css'));
  if (!script || !style) throw new Error(`console build: expected a .js and a .css bundle, got ${outputs.join(', ')}`);
  const index = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Abide console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/console/assets/${style}">
<script type="module" src="/console/assets/${script}"></script>
</head>
<body>
<noscript>The Abide console needs JavaScript.</noscript>
<div id="app"></div>
</body>
</html>
`;
  writeFileSync(join(outDirectory, 'index.html'), index);
  return ['index.html', ...outputs.map((name) => `assets/${name}`)].sort();
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const files = await buildConsole();
  console.log(`console built: ${files.join(', ')}`);
}
