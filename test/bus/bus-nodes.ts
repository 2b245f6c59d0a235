/**
 * Nodes of one cluster for the Redis fault tests: each a realtime server on
 * a loopback port with its own RedisBus (reaching Redis on the port given,
 * directly or through a proxy), and WebSocket clients to them; `close()`
 * ends all of them, last made first.
 */
import { createClient } from 'redis'
import { RedisBus, type RedisBusOptions } from '../../lib/bus/redis'
import { createRealtime, type Realtime } from '../../lib/server/realtime'
import type { RealtimeOptions } from '../../lib/types'
import { connect, listen, type TestClient } from '../helpers/net'
import { until } from './redis-helpers'

export interface BusNode { rt: Realtime; bus: RedisBus; port: number }

export function busNodes(defaults: RedisBusOptions) {
  const cleanup: Array<() => unknown> = []
  return {
    cleanup,
    /** `realtime`: the node's own options (authenticate, authorize…), besides its bus. */
    async node(redisPort: number, options: RedisBusOptions = {}, realtime: RealtimeOptions = {}): Promise<BusNode> {
      const client = await createClient({ url: `redis://127.0.0.1:${redisPort}`, socket: { reconnectStrategy: () => 50, connectTimeout: 1000 } }).connect()
      client.on('error', () => undefined)
      const bus = new RedisBus(client, { ...defaults, ...options })
      const rt = createRealtime({ ...realtime, bus })
      const srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(404).end() })
      rt.attach(srv.server)
      cleanup.push(() => client.destroy(), () => bus.close(), () => srv.close(), () => rt.close())
      await until(() => bus.connected, 5000, 'bus connected')
      return { rt, bus, port: srv.port }
    },
    async client(port: number): Promise<TestClient> {
      const c = await connect(port)
      cleanup.push(() => c.close())
      return c
    },
    async close(): Promise<void> {
      for (const fn of cleanup.splice(0).reverse()) await fn()
    },
  }
}
