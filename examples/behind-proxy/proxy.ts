/**
 * A reverse proxy (http-proxy) that strips the WebSocket upgrade the way
 * nginx's plain `proxy_pass` does: the browser's handshake is forwarded as
 * an ordinary GET without Upgrade/Connection (hop-by-hop headers a
 * WebSocket-unaware proxy drops) but with Sec-WebSocket-Key/-Version, and the
 * answer goes back as an ordinary response. With `strip: false` it forwards
 * upgrades (`ws: true`); the switch may flip while running. With `hold`, it
 * holds every streamed response (`text/event-stream`) until it ends, as a
 * compressing or buffering proxy does (nginx `gzip_types text/event-stream`,
 * an antivirus HTTPS scanner); `fail` answers the paths it matches with 502.
 * Shared by examples/behind-proxy and the client tests.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { once } from 'node:events'
import httpProxy from 'http-proxy'

export interface UpgradeProxy {
  server: Server
  port: number
  base: string
  /** Strip the upgrade (true) or forward it (false). */
  strip: boolean
  /** Hold event streams until they end (may change while running; streams already held stay held). */
  hold: boolean
  /** Answer requests whose path matches with 502 (a route the proxy blocks). */
  fail: RegExp | null
  close(): Promise<void>
}

export interface UpgradeProxyOptions {
  strip?: boolean
  hold?: boolean
  /** Default 0: any free port. */
  port?: number
  /** Default 127.0.0.1. */
  host?: string
}

export async function startUpgradeProxy(targetPort: number, options: UpgradeProxyOptions = {}): Promise<UpgradeProxy> {
  const host = options.host ?? '127.0.0.1'
  const proxy = httpProxy.createProxyServer({ target: `http://127.0.0.1:${targetPort}`, ws: true, selfHandleResponse: true })
  proxy.on('proxyRes', (proxyRes, _req, res) => {
    res.writeHead(proxyRes.statusCode ?? 502, proxyRes.headers)
    if (!(p.hold && /^text\/event-stream/.test(proxyRes.headers['content-type'] ?? ''))) return void proxyRes.pipe(res)
    // Held: nothing reaches the browser until the stream ends (headers and body alike, as nginx's gzip does).
    const chunks: Buffer[] = []
    res.flushHeaders = () => undefined
    proxyRes.on('data', (c: Buffer) => chunks.push(c))
    proxyRes.on('end', () => res.end(Buffer.concat(chunks)))
  })
  proxy.on('error', (_err, _req, res) => {
    if ('writeHead' in res && !res.headersSent) res.writeHead(502).end()
    else res.destroy()
  })
  proxy.on('proxyReq', (proxyReq, _req, res) => {
    proxyReq.removeHeader('upgrade')
    proxyReq.setHeader('connection', 'close')
    // http-proxy 1.x notices only a request aborted before its end; a client
    // leaving a stream must close the upstream request too, as nginx does.
    res.once('close', () => { if (!res.writableFinished) proxyReq.destroy() })
  })
  const server = createServer((req, res) => {
    if (p.fail?.test(req.url ?? '') === true) return void res.writeHead(502).end('bad gateway')
    proxy.web(req, res)
  })
  // Without an 'upgrade' listener Node hands an upgrade request to the
  // 'request' listeners like any GET: exactly a WebSocket-unaware proxy.
  const forward = (req: IncomingMessage, socket: Socket, head: Buffer) => proxy.ws(req, socket, head)
  const sockets = new Set<Socket>()
  server.on('connection', (s: Socket) => {
    sockets.add(s)
    s.once('close', () => sockets.delete(s))
  })
  server.listen(options.port ?? 0, host)
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port
  let stripping = true
  const p: UpgradeProxy = {
    server,
    port,
    base: `http://${host}:${port}`,
    hold: options.hold ?? false,
    fail: null,
    get strip() { return stripping },
    set strip(v: boolean) {
      if (v === stripping) return
      stripping = v
      if (v) server.off('upgrade', forward)
      else server.on('upgrade', forward)
    },
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      proxy.close()
    },
  }
  p.strip = options.strip ?? true
  return p
}
