/**
 * Redis for tests: the real server at 127.0.0.1:6379, a key prefix unique to
 * the run (deleted afterwards), and a loopback TCP proxy that can cut and
 * restore the connection to simulate an outage.
 */
import { spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net'
import { createClient } from 'redis'

export const REDIS_PORT = 6379
export const REDIS_URL = `redis://127.0.0.1:${REDIS_PORT}`

/**
 * Whether Redis answers PING, checked synchronously (jest must choose
 * `describe` or `describe.skip` while collecting). Under CI=true Redis is
 * required: the suite runs, and fails, without it.
 */
export function redisReachable(suite: string): boolean {
  const probe = `const s=require('net').connect(${REDIS_PORT},'127.0.0.1');s.setTimeout(1000,()=>process.exit(1));` +
    `s.on('error',()=>process.exit(1));s.on('data',d=>process.exit(String(d).startsWith('+PONG')?0:1));s.write('PING\\r\\n')`
  const ok = spawnSync(process.execPath, ['-e', probe], { timeout: 3000 }).status === 0
  if (!ok && process.env.CI !== 'true') {
    console.warn(`${suite}: skipped, no Redis at 127.0.0.1:${REDIS_PORT} (start one with redis-server; under CI=true this fails instead)`)
    return false
  }
  return true
}

export function uniquePrefix(): string {
  return `cms-realtime-test:${process.pid}:${randomBytes(3).toString('hex')}:`
}

export type TestRedis = Awaited<ReturnType<typeof connectRedis>>

/** A connected node-redis client; `port` lets it go through a `RedisProxy`. */
export function connectRedis(port = REDIS_PORT) {
  // Reconnect quickly so outage tests stay short.
  return createClient({ url: `redis://127.0.0.1:${port}`, socket: { reconnectStrategy: () => 50, connectTimeout: 1000 } }).connect()
}

/** Delete every key under `prefix`. */
export async function deleteKeys(client: TestRedis, prefix: string): Promise<void> {
  for await (const keys of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 500 })) {
    if (keys.length > 0) await client.del(keys)
  }
}

/** Forwards 127.0.0.1:<port> to Redis until `cut()`; `restore()` listens on the same port again. */
export class RedisProxy {
  port = 0
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()

  async start(): Promise<this> {
    const server = createServer((down) => {
      const up = connect(REDIS_PORT, '127.0.0.1')
      for (const s of [down, up]) {
        this.sockets.add(s)
        s.on('error', () => {})
        s.on('close', () => { this.sockets.delete(s); down.destroy(); up.destroy() })
      }
      down.pipe(up)
      up.pipe(down)
    })
    server.listen(this.port, '127.0.0.1')
    await once(server, 'listening')
    this.port = (server.address() as AddressInfo).port
    this.server = server
    return this
  }

  /** Redis becomes unreachable: open connections are reset and new ones refused. */
  async cut(): Promise<void> {
    const server = this.server
    this.server = undefined
    for (const s of this.sockets) s.destroy()
    if (server !== undefined) await new Promise((resolve) => server.close(resolve))
  }

  restore(): Promise<this> {
    return this.start()
  }

  close(): Promise<void> {
    return this.cut()
  }
}

/** Poll `check` until it holds or `timeoutMs` passes. */
export async function until(check: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}
