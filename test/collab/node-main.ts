/**
 * One cms-realtime node in its own process, for the tests that kill a node
 * (SIGKILL: no close, no cleanup, leases left to lapse). Prints its port.
 *   node --import tsx test/collab/node-main.ts <keyPrefix> '<collab options JSON>'
 */
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createClient } from 'redis'
import { createRealtime } from '../../lib/server/realtime'
import { RedisBus } from '../../lib/bus/redis'

async function main(): Promise<void> {
  const [prefix, timings] = process.argv.slice(2)
  const client = createClient({ url: 'redis://127.0.0.1:6379' })
  client.on('error', () => {})
  await client.connect()
  const bus = new RedisBus(client, { keyPrefix: prefix })
  const rt = createRealtime({
    bus,
    authenticate: (req: IncomingMessage) => ({ id: String(req.headers['x-user']) }),
    collab: JSON.parse(timings ?? '{}') as object,
  })
  const srv = createServer((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(404).end() })
  rt.attach(srv)
  srv.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ port: (srv.address() as AddressInfo).port })))
}

void main()
