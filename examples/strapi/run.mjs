// `npm run example:strapi`: the Strapi example from a fresh clone, in one
// command. Each step is skipped when already done, so the second start is quick:
//   1. build cms-realtime (the example depends on this checkout, `file:../..`);
//   2. install the example's own dependencies (Strapi: ~1,400 packages);
//   3. write .env with fresh secrets (as create-strapi does);
//   4. create the PostgreSQL database (DATABASE_URL, default the local server);
//   5. compile, and build the admin panel once (unless SERVE_ADMIN_PANEL=false);
//   6. `strapi start` on PORT (default 1337). Ctrl-C stops it.
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, statSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
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
    step('installing the Strapi example', 'npm', ['install', '--no-audit', '--no-fund'], here)
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
  // `strapi build` compiles the TypeScript and builds the admin panel (~40 s, once);
  // later starts only recompile what changed (incremental tsc, ~3 s).
  if (buildAdmin && !existsSync(join(here, 'dist', 'build', 'index.html'))) step('building the admin panel', 'npx', ['strapi', 'build'], here)
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

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  // `--prepare --no-admin`: what `npm run test:strapi` needs (the tests start Strapi themselves).
  await prepare(process.argv.includes('--no-admin') ? { buildAdmin: false } : undefined)
  if (process.argv.includes('--prepare')) process.exit(0)
  const bin = join(here, 'node_modules', '.bin', 'strapi')
  const child = spawn(bin, ['start'], { cwd: here, stdio: 'inherit', env: { ...process.env, NODE_ENV: process.env.NODE_ENV ?? 'development' } })
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig))
  child.on('exit', (code) => process.exit(code ?? 0))
  const port = process.env.PORT ?? '1337'
  console.log(`[example:strapi] live page: http://localhost:${port}/live.html · admin: http://localhost:${port}/admin ` +
    `(${process.env.STRAPI_ADMIN_EMAIL ?? 'admin@example.com'})`)
}
