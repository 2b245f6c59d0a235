/**
 * A redis-server of the test's own (Debian's package) on a loopback port, in
 * a temp dir, no persistence: the fault tests stop, continue, kill and
 * restart it, and only it. And a TCP proxy that can stop forwarding without
 * closing anything, the way a dead link or a partition looks to a node.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer, connect, type Server, type Socket, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from '../helpers/nginx'

export class RedisServer {
  port = 0
  private child: ChildProcess | undefined
  private readonly dir = mkdtempSync(join(tmpdir(), 'cms-realtime-redis-'))

  async start(): Promise<this> {
    if (this.port === 0) this.port = await freePort()
    this.child = spawn('redis-server', [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir, '--loglevel', 'warning',
    ], { stdio: 'ignore' })
    const deadline = Date.now() + 5000
    while (!(await ping(this.port))) {
      if (Date.now() > deadline) throw new Error('redis-server did not start')
      await new Promise((r) => setTimeout(r, 20))
    }
    return this
  }

  /** SIGSTOP: the process is frozen, its connections stay open and silent. */
  pause(): void { this.child?.kill('SIGSTOP') }
  resume(): void { this.child?.kill('SIGCONT') }

  /** SIGKILL: gone at once, and with it every key (no persistence). */
  async kill(): Promise<void> {
    const c = this.child
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return
    const exited = new Promise((r) => c.once('exit', r))
    c.kill('SIGCONT')
    c.kill('SIGKILL')
    await exited
  }

  async stop(): Promise<void> {
    await this.kill()
    rmSync(this.dir, { recursive: true, force: true })
  }

  async command(...args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = connect(this.port, '127.0.0.1')
      let out = ''
      s.on('data', (d) => { out += d.toString(); if (out.endsWith('\r\n')) { s.destroy(); resolve(out.trim()) } })
      s.on('error', reject)
      s.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`)
    })
  }
}

function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.setTimeout(500, () => { s.destroy(); resolve(false) })
    s.on('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')) })
    s.on('error', () => resolve(false))
    s.write('PING\r\n')
  })
}

/** Forwards 127.0.0.1:<port> to `target`; `pause()` stops forwarding in both directions (nothing is closed). */
export class PausableProxy {
  port = 0
  private server: Server | undefined
  private readonly pairs = new Set<[Socket, Socket]>()
  private paused = false

  constructor(private readonly target: () => number) {}

  async start(): Promise<this> {
    this.server = createServer((down) => {
      const up = connect(this.target(), '127.0.0.1')
      const pair: [Socket, Socket] = [down, up]
      this.pairs.add(pair)
      for (const s of pair) {
        s.on('error', () => {})
        s.on('close', () => { this.pairs.delete(pair); down.destroy(); up.destroy() })
      }
      down.pipe(up)
      up.pipe(down)
      if (this.paused) { down.pause(); up.pause() }
    })
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r))
    this.port = (this.server.address() as AddressInfo).port
    return this
  }

  /** Stop forwarding: bytes queue up unread on both sides, like a link that went silent. */
  pause(): void {
    this.paused = true
    for (const [a, b] of this.pairs) { a.unpipe(b); b.unpipe(a); a.pause(); b.pause() }
  }

  /** Reset every connection through it (new ones are still forwarded): what a dropped link looks like to both ends. */
  cut(): void {
    for (const [a, b] of this.pairs) { a.destroy(); b.destroy() }
  }

  resume(): void {
    this.paused = false
    for (const [a, b] of this.pairs) { a.pipe(b); b.pipe(a); a.resume(); b.resume() }
  }

  async close(): Promise<void> {
    for (const [a, b] of this.pairs) { a.destroy(); b.destroy() }
    await new Promise((r) => this.server?.close(r))
  }
}

/** Forwards 127.0.0.1:<port> to `target`, every chunk delayed by `ms` in each direction, in order: a slow link (a far region, a congested VPN). */
export class DelayProxy {
  port = 0
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()

  constructor(private readonly target: number, private readonly ms: number) {}

  async start(): Promise<this> {
    this.server = createServer((client) => {
      const upstream = connect(this.target, '127.0.0.1')
      for (const s of [client, upstream]) {
        this.sockets.add(s)
        s.on('error', () => { client.destroy(); upstream.destroy() })
        s.on('close', () => { this.sockets.delete(s); client.destroy(); upstream.destroy() })
      }
      const relay = (from: Socket, to: Socket): void => {
        from.on('data', (chunk) => { setTimeout(() => { if (!to.destroyed) to.write(chunk) }, this.ms) })
      }
      relay(client, upstream)
      relay(upstream, client)
    })
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve))
    this.port = (this.server!.address() as AddressInfo).port
    return this
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve())
  }
}
