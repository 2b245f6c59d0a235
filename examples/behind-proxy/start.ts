/**
 * The demo CMS behind a proxy that strips WebSocket upgrades: the app listens
 * on `appPort`, the proxy on `port` in front of it. Through the proxy the page
 * ends in `fallback` (events over SSE; with `hold`, over long polling) and the
 * client's diagnosis names the proxy; straight to the app it is `live`.
 */
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { once } from 'node:events'
import type { KoaRealtime, KoaRealtimeOptions } from 'cms-realtime/koa'
import { createApp } from '../koa-cms/app'
import { startUpgradeProxy, type UpgradeProxy } from './proxy'

export interface BehindProxy {
  rt: KoaRealtime
  app: { server: Server; base: string }
  proxy: UpgradeProxy
  close(): Promise<void>
}

export interface BehindProxyOptions {
  /** The proxy's port, the one to open. Default 0: any free port. */
  port?: number
  /** The app's own port. Default 0. */
  appPort?: number
  host?: string
  /** Also hold streamed responses until they end, as a compressing proxy does: the page steps down to long polling. */
  hold?: boolean
  realtime?: KoaRealtimeOptions
}

export async function startBehindProxy(options: BehindProxyOptions = {}): Promise<BehindProxy> {
  const host = options.host ?? '127.0.0.1'
  const { app, rt } = createApp(options.realtime)
  const server = app.listen(options.appPort ?? 0, host)
  await once(server, 'listening')
  rt.attach(server)
  const appPort = (server.address() as AddressInfo).port
  const proxy = await startUpgradeProxy(appPort, { strip: true, hold: options.hold === true, port: options.port ?? 0, host })
  return {
    rt,
    app: { server, base: `http://${host}:${appPort}` },
    proxy,
    close: async () => {
      await proxy.close()
      await rt.close(200)
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}
