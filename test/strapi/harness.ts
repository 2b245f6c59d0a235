/**
 * A real Strapi 5 (examples/strapi, TypeScript, PostgreSQL) for the Strapi
 * suites: started the way a user starts it (`strapi start`), on its own
 * database and a loopback port, and the sockets and HTTP calls the tests
 * make against it. Run by `npm run test:strapi`, not `npm test`.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { createServer } from 'node:net'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import WebSocket from 'ws'

export const EXAMPLE = join(__dirname, '..', '..', 'examples', 'strapi')
export const CHROMIUM = '/usr/bin/chromium'
export const PG = process.env.TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432'
export const ADMIN = { email: 'ci-admin@example.com', password: 'Ci-admin-pass-1' }
export const UID = 'api::article.article'
export const TOPIC = `strapi:${UID}`
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic']

export function skipReason(needs: { admin?: boolean } = {}): string | undefined {
  if (!existsSync(join(EXAMPLE, 'node_modules', '@strapi', 'strapi'))) return 'the example is not installed (npm run test:strapi installs it)'
  if (!existsSync(join(EXAMPLE, 'dist', 'src', 'index.js'))) return 'the example is not compiled (npm run test:strapi compiles it)'
  if (needs.admin === true && !existsSync(join(EXAMPLE, 'dist', 'build', 'index.html'))) return 'the admin panel is not built (npm run test:strapi builds it)'
  const probe = spawnSync(process.execPath, ['-e', `const s=require('net').connect(5432,'127.0.0.1');s.on('connect',()=>process.exit(0));s.on('error',()=>process.exit(1))`], { timeout: 3000 })
  if (probe.status !== 0) return 'no PostgreSQL at 127.0.0.1:5432'
  if (!existsSync(CHROMIUM)) return `${CHROMIUM} is missing`
  return undefined
}

/** `describe`, or `describe.skip` with the reason printed; under CI=true never skipped. */
export function describeStrapi(needs: { admin?: boolean } = {}): jest.Describe {
  const why = skipReason(needs)
  if (why !== undefined && process.env.CI !== 'true') console.warn(`Strapi tests skipped: ${why}; under CI=true they run and fail`)
  return why === undefined || process.env.CI === 'true' ? describe : describe.skip
}

/**
 * `STRAPI_TEST_PORT`, or a free loopback port below 32768: the kernel hands
 * out ports above that to outgoing connections, so one found free there can
 * be taken before Strapi listens on it.
 */
export async function testPort(offset = 0): Promise<number> {
  const fixed = Number(process.env.STRAPI_TEST_PORT)
  if (Number.isInteger(fixed) && fixed > 0) return fixed + offset
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000)
    const s = createServer()
    const free = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false))
      s.listen(port, '127.0.0.1', () => resolve(true))
    })
    if (free) {
      await new Promise((r) => s.close(r))
      return port
    }
  }
}

export async function resetDatabase(db: string): Promise<void> {
  // pg is the example's dependency, not the library's.
  const { Client } = createRequire(join(EXAMPLE, 'package.json'))('pg') as {
    Client: new (o: { connectionString: string }) => { connect(): Promise<void>; query(sql: string): Promise<unknown>; end(): Promise<void> }
  }
  const c = new Client({ connectionString: `${PG}/postgres` })
  await c.connect()
  try {
    await c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`)
    await c.query(`CREATE DATABASE ${db}`)
  } finally {
    await c.end()
  }
}

export async function until<T>(fn: () => T | undefined | false, what: string, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const v = fn()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

export interface Socket {
  ws: WebSocket
  frames: Array<Record<string, unknown> & { op: string; at: number }>
  closed: Promise<number>
  closedAt?: number
}

export function open(url: string, headers: Record<string, string> = {}): Promise<Socket | { status: number; body: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, 'cms-realtime.v1', { headers })
    const frames: Socket['frames'] = []
    const s: Socket = { ws, frames, closed: new Promise<number>((r) => ws.once('close', (code) => { s.closedAt = Date.now(); r(code) })) }
    ws.on('message', (m) => frames.push({ ...(JSON.parse(String(m)) as { op: string }), at: Date.now() }))
    ws.once('open', () => resolve(s))
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    ws.on('error', () => {})
  })
}

export interface Running {
  process: ChildProcess
  base: string
  wsUrl: string
  port: number
  /** Everything Strapi printed. */
  output(): string
  api(path: string, init?: { method?: string; body?: unknown; token?: string }): Promise<{ status: number; body: any }> // eslint-disable-line @typescript-eslint/no-explicit-any
  stop(): Promise<void>
}

/** `strapi start` on database `db` (emptied first unless `reset: false`: a second node), with the example's admin (ADMIN) created on first start. */
export async function startStrapi(db: string, env: Record<string, string> = {}, { reset = true } = {}): Promise<Running> {
  if (reset) await resetDatabase(db)
  const port = await testPort()
  const base = `http://127.0.0.1:${port}`
  let output = ''
  const child = spawn(join(EXAMPLE, 'node_modules', '.bin', 'strapi'), ['start'], {
    cwd: EXAMPLE,
    env: {
      ...process.env, PORT: String(port), HOST: '127.0.0.1', DATABASE_URL: `${PG}/${db}`, SERVE_ADMIN_PANEL: 'false',
      STRAPI_ADMIN_EMAIL: ADMIN.email, STRAPI_ADMIN_PASSWORD: ADMIN.password, STRAPI_TELEMETRY_DISABLED: 'true', NODE_ENV: 'development',
      // STRAPI_TEST_DEBUG=cms-realtime* shows the integration's own log in Strapi's output.
      DEBUG: process.env.STRAPI_TEST_DEBUG ?? '', FORCE_COLOR: '0', ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout!.on('data', (d: Buffer) => { output += d.toString() })
  child.stderr!.on('data', (d: Buffer) => { output += d.toString() })
  const t0 = Date.now()
  await until(() => output.includes('Strapi started successfully') || child.exitCode !== null, 'Strapi to start', 90_000)
  if (child.exitCode !== null) throw new Error(`Strapi exited:\n${output}`)
  console.log(`Strapi started in ${Date.now() - t0} ms`)
  const api: Running['api'] = async (path, init = {}) => {
    const r = await fetch(base + path, {
      method: init.method ?? 'GET',
      headers: { 'Content-Type': 'application/json', ...(init.token === undefined ? {} : { Authorization: `Bearer ${init.token}` }) },
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
    })
    const text = await r.text()
    let body: unknown = null
    try {
      body = text === '' ? null : JSON.parse(text)
    } catch {
      body = text
    }
    return { status: r.status, body: body as any } // eslint-disable-line @typescript-eslint/no-explicit-any
  }
  return {
    process: child, base, port, wsUrl: `ws://127.0.0.1:${port}/realtime`, api,
    output: () => output,
    async stop() {
      // Gone already (a test killed it): its 'exit' has fired, and will not again.
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = once(child, 'exit')
      child.kill('SIGKILL')
      await exited
    },
  }
}

/** A second admin with a role (default: Editor), signed in: their JWT and id. */
export async function addAdmin(s: Running, superJwt: string, who: { firstname: string; lastname: string; email: string; password: string; role?: string }) {
  const roles = (await s.api('/admin/roles', { token: superJwt })).body.data as Array<{ id: number; code: string; name: string }>
  const role = roles.find((r) => r.name === (who.role ?? 'Editor'))!
  const created = await s.api('/admin/users', { method: 'POST', token: superJwt, body: { firstname: who.firstname, lastname: who.lastname, email: who.email, roles: [role.id] } })
  if (created.status !== 201) throw new Error(`could not create ${who.email}: ${created.status} ${JSON.stringify(created.body)}`)
  const id = created.body.data.id as number
  const set = await s.api(`/admin/users/${id}`, { method: 'PUT', token: superJwt, body: { password: who.password, isActive: true } })
  if (set.status !== 200) throw new Error(`could not activate ${who.email}: ${set.status} ${JSON.stringify(set.body)}`)
  const login = await s.api('/admin/login', { method: 'POST', body: { email: who.email, password: who.password } })
  return { id, jwt: login.body.data.token as string, roleId: role.id }
}
