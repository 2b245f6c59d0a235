/**
 * One node of the cluster demo. Start two, on two ports, sharing one Redis:
 *
 *   PORT=3001 npx tsx examples/cluster/node.ts
 *   PORT=3002 npx tsx examples/cluster/node.ts
 *
 * A client connected to either node gets what is published on both:
 *   curl -X POST -d '{"title":"Hero"}' http://localhost:3001/publish/project:1
 *
 * Env: PORT (default 3001), REDIS_URL (default redis://127.0.0.1:6379),
 * KEY_PREFIX (default `cms-realtime-demo:`).
 */
import { createServer } from 'node:http'
import { createClient } from 'redis'
import { createRealtime } from 'cms-realtime'
import { RedisBus } from 'cms-realtime/redis'

async function main(): Promise<void> {
  const port = Number(process.env.PORT ?? 3001)
  const redis = createClient({ url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' })
  redis.on('error', () => {}) // the bus logs Redis errors (DEBUG=cms-realtime:redis)
  await redis.connect()
  const bus = new RedisBus(redis, { keyPrefix: process.env.KEY_PREFIX ?? 'cms-realtime-demo:' })
  const rt = createRealtime({ bus })

  const server = createServer((req, res) => {
    if (rt.handleRequest(req, res)) return
    const topic = req.method === 'POST' ? /^\/publish\/([^/?]+)$/.exec(req.url ?? '')?.[1] : undefined
    if (topic === undefined) return void res.writeHead(404).end()
    let body = ''
    req.setEncoding('utf8').on('data', (chunk: string) => { body += chunk }).on('end', () => {
      let data: unknown
      try {
        data = body === '' ? null : JSON.parse(body)
      } catch {
        return void res.writeHead(400).end('body must be JSON\n')
      }
      rt.publish(decodeURIComponent(topic), 'changed', data).then(
        (published) => res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ ...published, node: port })),
        (err: Error) => res.writeHead(400).end(`${err.message}\n`),
      )
    })
  })
  rt.attach(server)
  server.listen(port, () => console.log(`cluster node listening on http://localhost:${port} (ws: /realtime)`))

  const stop = (): void => {
    void rt.close().then(() => bus.close()).then(() => redis.close()).then(() => server.close(() => process.exit(0)))
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
