/**
 * Test helpers: real servers on 127.0.0.1 port 0, raw-socket HTTP for the
 * malformed handshakes no client library would send, and a `ws` client
 * whose incoming frames queue up for `next()`.
 */
import { once } from 'node:events'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { connect as netConnect, type AddressInfo } from 'node:net'
import WebSocket from 'ws'
import { PROTOCOL } from '../../lib/types'

export interface Listening {
  server: Server
  port: number
  base: string
  close(): Promise<void>
}

/** Start `server` (or a new one around `handler`) on 127.0.0.1, port 0. */
export async function listen(
  serverOrHandler: Server | ((req: IncomingMessage, res: ServerResponse) => void) = (_req, res) => { res.statusCode = 404; res.end() },
): Promise<Listening> {
  const server = typeof serverOrHandler === 'function' ? createServer(serverOrHandler) : serverOrHandler
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port
  return {
    server,
    port,
    base: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections()
      server.close(() => resolve())
    }),
  }
}

export interface RawResponse {
  status: number
  statusLine: string
  headers: Record<string, string>
  body: string
  /** The server closed the connection after answering. */
  closed: boolean
}

/**
 * Send `head` (request line and headers, no final blank line) on a raw socket
 * and read until the server closes or `timeoutMs` passes.
 */
export function rawRequest(port: number, head: string, timeoutMs = 3000): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    let timedOut = false
    const timer = setTimeout(() => { timedOut = true; socket.destroy() }, timeoutMs)
    socket.on('data', (c) => {
      chunks.push(c)
      // A 101 never ends by itself: stop once its head is complete.
      const text = Buffer.concat(chunks).toString('latin1')
      if (text.startsWith('HTTP/1.1 101') && text.includes('\r\n\r\n')) finish(false)
    })
    socket.on('error', reject)
    let done = false
    const finish = (closed: boolean) => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      const text = Buffer.concat(chunks).toString('latin1')
      const [top = '', ...rest] = text.split('\r\n\r\n')
      const [statusLine = '', ...lines] = top.split('\r\n')
      const headers: Record<string, string> = {}
      for (const l of lines) {
        const i = l.indexOf(':')
        if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
      }
      resolve({ status: Number(statusLine.split(' ')[1] ?? 0), statusLine, headers, body: rest.join('\r\n\r\n'), closed })
    }
    socket.on('close', () => finish(!timedOut))
    socket.write(head.replace(/\n/g, '\r\n').replace(/(\r\n)*$/, '') + '\r\n\r\n')
  })
}

/** Headers of a valid handshake for `path` on `port`. */
export function handshake(port: number, path = '/realtime', extra: Record<string, string | undefined> = {}, method = 'GET'): string {
  const headers: Record<string, string | undefined> = {
    Host: `127.0.0.1:${port}`,
    Connection: 'Upgrade',
    Upgrade: 'websocket',
    'Sec-WebSocket-Version': '13',
    'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
    ...extra,
  }
  const lines = Object.entries(headers).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}: ${v}`)
  return [`${method} ${path} HTTP/1.1`, ...lines].join('\n')
}

export type Frame = { op: string; [k: string]: unknown }

/** A `ws` client whose frames are queued as parsed JSON. */
export class TestClient {
  readonly frames: Frame[] = []
  private waiters: Array<() => void> = []
  closeCode: number | undefined

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      this.frames.push(JSON.parse(data.toString()) as Frame)
      for (const w of this.waiters.splice(0)) w()
    })
    ws.on('close', (code) => {
      this.closeCode = code
      for (const w of this.waiters.splice(0)) w()
    })
    ws.on('error', () => {})
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame))
  }

  /** Next frame (optionally the next one matching `match`), removing it and everything before it. */
  async next(match: (f: Frame) => boolean = () => true, timeoutMs = 3000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const i = this.frames.findIndex(match)
      if (i >= 0) return this.frames.splice(0, i + 1)[i]!
      if (this.closeCode !== undefined) throw new Error(`socket closed (${this.closeCode}) while waiting; frames: ${JSON.stringify(this.frames)}`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`timed out waiting for a frame; have ${JSON.stringify(this.frames)}`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left)
        this.waiters.push(() => { clearTimeout(t); resolve() })
      })
    }
  }

  op(op: string, timeoutMs?: number): Promise<Frame> {
    return this.next((f) => f.op === op, timeoutMs)
  }

  async subscribe(topic: string, since?: string): Promise<Frame> {
    this.send(since === undefined ? { op: 'subscribe', topic } : { op: 'subscribe', topic, since })
    return this.next((f) => (f.op === 'subscribed' || f.op === 'error') && f.topic === topic)
  }

  /** Resolves with the close code. */
  closed(timeoutMs = 3000): Promise<number> {
    if (this.closeCode !== undefined) return Promise.resolve(this.closeCode)
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('socket did not close')), timeoutMs)
      this.ws.once('close', (code) => { clearTimeout(t); resolve(code) })
    })
  }

  close(): void {
    this.ws.terminate()
  }
}

/** Open a client on `port` and wait for it to be open (rejects with the HTTP status on refusal). */
export async function connect(
  port: number,
  { path = '/realtime', headers = {}, protocol = PROTOCOL }: { path?: string; headers?: Record<string, string>; protocol?: string | null } = {},
): Promise<TestClient> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`, protocol === null ? [] : [protocol], { headers })
  const client = new TestClient(ws)
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode })))
    ws.once('error', reject)
  })
  return client
}

/** Close every client and server made in a test. */
export class Cleanup {
  private fns: Array<() => unknown> = []
  add<T>(fn: () => unknown, value?: T): T | undefined {
    this.fns.push(fn)
    return value
  }
  async run(): Promise<void> {
    for (const fn of this.fns.splice(0).reverse()) await fn()
  }
}
