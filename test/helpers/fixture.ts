/** A core Realtime on a real HTTP server on 127.0.0.1, torn down after each test. */
import type { IncomingMessage } from 'node:http'
import { createRealtime, type Realtime } from '../../lib/server/realtime'
import type { RealtimeOptions } from '../../lib/types'
import { connect, listen, type Listening, type TestClient } from './net'

export interface Fixture {
  rt: Realtime
  srv: Listening
  clients: TestClient[]
  connect(opts?: Parameters<typeof connect>[1]): Promise<TestClient>
  close(): Promise<void>
}

export async function fixture(options: RealtimeOptions<IncomingMessage> = {}): Promise<Fixture> {
  const rt = createRealtime(options)
  const srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(200).end('app page') })
  rt.attach(srv.server)
  const clients: TestClient[] = []
  return {
    rt,
    srv,
    clients,
    async connect(opts) {
      const c = await connect(srv.port, opts)
      clients.push(c)
      return c
    },
    async close() {
      for (const c of clients) c.close()
      await rt.close(200)
      await srv.close()
    },
  }
}
