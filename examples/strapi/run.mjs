// `npm run example:strapi`: the Strapi example from a fresh clone, in one
// command. Each step is skipped when already done, so the second start is quick:
//   1. build cms-realtime (the example depends on this checkout, `file:../..`);
//   2. install the example's own dependencies (Strapi: ~1,400 packages);
//   3. write .env with fresh secrets (as create-strapi does);
//   4. create the PostgreSQL database (DATABASE_URL, default the local server);
//   5. compile, and build the admin panel once (unless SERVE_ADMIN_PANEL=false);
//   6. `strapi start` on PORT (default 1337, or a free port below 32768 if
//      1337 is taken). Ctrl-C stops it.
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, statSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { createServer } from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..', '..')
export const DEFAULT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/cms_realtime_strapi'

function step(what, cmd, args, cwd) {
  const t = Date.now()
  console.log(`[example:strapi] ${what}…`)
  const r = spawnSync(cmd, args, { cwd, stdio: 'inherit', env: process.env })
  if (r.status !== 0) {
    console.error(`[example:strapi] ${what} failed (exit ${r.status})`)
    process.exit(r.status ?? 1)
  }
  console.log(`[example:strapi] ${what}: ${((Date.now() - t) / 1000).toFixed(1)} s`)
}

const newer = (a, b) => !existsSync(b) || statSync(a).mtimeMs > statSync(b).mtimeMs

export async function prepare({ buildAdmin = process.env.SERVE_ADMIN_PANEL !== 'false' } = {}) {
  if (!existsSync(join(root, 'node_modules', 'ws'))) step('installing cms-realtime', 'npm', ['install', '--no-audit', '--no-fund'], root)
  if (!existsSync(join(root, 'dist', 'integrations', 'strapi', 'index.js'))) step('building cms-realtime', 'npm', ['run', 'build'], root)
  if (newer(join(here, 'package.json'), join(here, 'node_modules', '.package-lock.json'))) {
    // --no-save: the committed package-lock.json stays as committed (it mirrors
    // cms-realtime's own package.json, `file:../..`, so a plain install rewrites it).
    step('installing the Strapi example', 'npm', ['install', '--no-save', '--no-audit', '--no-fund'], here)
  }
  const env = join(here, '.env')
  if (!existsSync(env)) {
    const secret = () => randomBytes(16).toString('base64')
    writeFileSync(env, [
      `APP_KEYS=${[secret(), secret(), secret(), secret()].join(',')}`,
      `API_TOKEN_SALT=${secret()}`, `ADMIN_JWT_SECRET=${secret()}`, `JWT_SECRET=${secret()}`,
      `TRANSFER_TOKEN_SALT=${secret()}`, `ENCRYPTION_KEY=${secret()}`, '',
    ].join('\n'))
    console.log('[example:strapi] wrote .env with fresh secrets')
  }
  await createDatabase(process.env.DATABASE_URL ?? DEFAULT_DATABASE_URL)
  // `strapi build` compiles the TypeScript and builds the admin panel (about a minute on two cores, once);
  // later starts only recompile what changed (incremental tsc, ~3 s).
  // Again when the live Content Manager (cms-realtime/strapi-admin) or the app's admin entry changed.
  const built = join(here, 'dist', 'build', 'index.html')
  const stale = !existsSync(built) || newer(join(root, 'dist', 'strapi-admin.mjs'), built) || newer(join(here, 'src', 'admin', 'app.tsx'), built)
  if (buildAdmin && stale) step('building the admin panel', 'npx', ['strapi', 'build'], here)
  else step('compiling', 'npx', ['tsc', '-p', 'tsconfig.json'], here)
}

/** CREATE DATABASE if it is missing (Strapi creates tables, not databases). */
export async function createDatabase(url) {
  const { Client } = createRequire(join(here, 'package.json'))('pg')
  const target = new URL(url)
  const name = decodeURIComponent(target.pathname.slice(1))
  const admin = new URL(url)
  admin.pathname = '/postgres'
  const client = new Client({ connectionString: admin.href })
  try {
    await client.connect()
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])
    if (rowCount === 0) {
      await client.query(`CREATE DATABASE "${name.replaceAll('"', '""')}"`)
      console.log(`[example:strapi] created database ${name}`)
    }
  } catch (err) {
    console.error(`[example:strapi] PostgreSQL at ${target.host} is not reachable or refused (${err.message}). ` +
      'Start it (Debian: pg_ctlcluster 15 main start) or set DATABASE_URL.')
    process.exit(1)
  } finally {
    await client.end().catch(() => {})
  }
}

/** Can `port` be listened on? */
function free(port) {
  return new Promise((resolve) => {
    const s = createServer()
    s.once('error', () => resolve(false))
    s.listen(port, () => s.close(() => resolve(true)))
  })
}

/**
 * PORT, else 1337 if free, else a free port below 32768: the kernel hands
 * out ports above that to outgoing connections, so one seen free there may
 * be taken by the time Strapi listens.
 */
export async function pickPort() {
  if (process.env.PORT) return process.env.PORT
  if (await free(1337)) return '1337'
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000)
    if (await free(port)) return String(port)
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  // `--prepare`: what `npm run test:strapi` needs (the tests start Strapi themselves); `--no-admin` skips the admin panel.
  await prepare(process.argv.includes('--no-admin') ? { buildAdmin: false } : undefined)
  if (process.argv.includes('--prepare')) process.exit(0)
  const bin = join(here, 'node_modules', '.bin', 'strapi')
  const port = await pickPort()
  const child = spawn(bin, ['start'], { cwd: here, stdio: 'inherit', env: { ...process.env, PORT: port, NODE_ENV: process.env.NODE_ENV ?? 'development' } })
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig))
  child.on('exit', (code) => process.exit(code ?? 0))
  console.log(`[example:strapi] live page: http://localhost:${port}/live.html · admin: http://localhost:${port}/admin ` +
    `(${process.env.STRAPI_ADMIN_EMAIL ?? 'admin@example.com'})`)
}
