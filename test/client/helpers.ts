/**
 * Helpers for the client tests: an app (core + node:http) on port 0, a
 * reverse proxy in front of it (examples/behind-proxy/proxy.ts: one that strips
 * the upgrade the way nginx's plain proxy_pass does, one that forwards it), and
 * the real client with `ws` and `eventsource` injected.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import { createRealtime, type Realtime } from '../../lib/server/realtime'
import type { RealtimeOptions } from '../../lib/types'
import { createClient, type ClientOptions, type RealtimeClient, type RealtimeEvent } from '../../lib/client'
import { listen, type Listening } from '../helpers/net'
import { startUpgradeProxy } from '../../examples/behind-proxy/proxy'

export interface App {
  rt: Realtime
  srv: Listening
  /** Every socket the server accepted, upgraded ones included (to kill them in a "restart"). */
  sockets: Set<Socket>
  /** Upgrade requests seen. */
  upgrades: number
  /** Requests seen, by pathname. */
  hits: Map<string, number>
}

export async function startApp(
  options: RealtimeOptions = {},
  page: (req: IncomingMessage, res: ServerResponse) => boolean = () => false,
): Promise<App> {
  const rt = createRealtime(options)
  const hits = new Map<string, number>()
  const app: App = { rt, srv: undefined as unknown as Listening, sockets: new Set(), upgrades: 0, hits }
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!
    hits.set(path, (hits.get(path) ?? 0) + 1)
    if (rt.handleRequest(req, res)) return
    if (!page(req, res)) res.writeHead(404).end()
  })
  trackSockets(server, app.sockets)
  server.on('upgrade', () => { app.upgrades++ })
  rt.attach(server)
  app.srv = await listen(server)
  return app
}

export function trackSockets(server: Server, sockets: Set<Socket>): void {
  server.on('connection', (s: Socket) => {
    sockets.add(s)
    s.once('close', () => sockets.delete(s))
  })
}

export interface Proxy {
  srv: Listening
  /** Strip the upgrade (true) or forward it (false); may change while running. */
  strip: boolean
}

/** A reverse proxy in front of `target` that strips upgrades (true) or forwards them (false). */
export async function startProxy(target: number, strip: boolean): Promise<Proxy> {
  const p = await startUpgradeProxy(target, { strip })
  return {
    srv: { server: p.server, port: p.port, base: p.base, close: p.close },
    get strip() { return p.strip },
    set strip(v: boolean) { p.strip = v },
  }
}

export const FAST = { initialMs: 50, maxMs: 400, factor: 2, jitter: 0.5 }

export function client(base: string, options: Partial<ClientOptions> = {}): RealtimeClient {
  return createClient({
    configUrl: `${base}/realtime/config`,
    WebSocket,
    EventSource,
    fetch: browserFetch(base),
    backoff: FAST,
    ...options,
  })
}

/**
 * Node's fetch as a page at `origin` would send it: a browser puts `Origin`
 * on every request that is not a GET or HEAD (the Fetch standard), and the
 * diagnostics endpoint refuses reports without it.
 */
export function browserFetch(origin: string): NonNullable<ClientOptions['fetch']> {
  const o = new URL(origin).origin
  return (url, init = {}) => {
    const method = init.method ?? 'GET'
    const headers = method === 'GET' || method === 'HEAD' ? init.headers : { Origin: o, ...init.headers }
    return fetch(url, { ...init, ...(headers === undefined ? {} : { headers }) })
  }
}

/** Subscribe and keep what arrives. */
export function collect(c: RealtimeClient, topic: string): RealtimeEvent[] {
  const got: RealtimeEvent[] = []
  c.subscribe(topic, (e) => got.push(e))
  return got
}

/** Wait until `pred()` holds (polled), or fail with `what`. */
export async function waitFor(pred: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
