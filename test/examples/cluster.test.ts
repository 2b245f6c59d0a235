/**
 * Smoke test of examples/cluster: two node processes on real Redis; a
 * client on one receives what is published through the other.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createServer, type AddressInfo } from 'node:net'
import { connect, type TestClient } from '../helpers/net'
import { connectRedis, deleteKeys, redisReachable, uniquePrefix } from '../bus/redis-helpers'

const d = redisReachable('examples/cluster') ? describe : describe.skip
const root = `${__dirname}/../..`

async function freePort(): Promise<number> {
  const s = createServer().listen(0, '127.0.0.1')
  await once(s, 'listening')
  const port = (s.address() as AddressInfo).port
  await new Promise((r) => s.close(r))
  return port
}

async function startNode(port: number, prefix: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'examples/cluster/node.ts'], {
    cwd: root,
    env: { ...process.env, PORT: String(port), KEY_PREFIX: prefix },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`node did not start: ${out}`)), 10_000)
    const onData = (chunk: Buffer): void => {
      out += chunk.toString()
      if (out.includes('listening')) { clearTimeout(t); resolve() }
    }
    child.stdout!.on('data', onData)
    child.stderr!.on('data', onData)
    child.once('exit', (code) => { clearTimeout(t); reject(new Error(`node exited ${code}: ${out}`)) })
  })
  return child
}

d('examples/cluster', () => {
  test('a client on one node receives what is published on the other', async () => {
    const prefix = uniquePrefix()
    const [portA, portB] = [await freePort(), await freePort()]
    const children: ChildProcess[] = []
    let client: TestClient | undefined
    try {
      children.push(await startNode(portA, prefix), await startNode(portB, prefix))
      client = await connect(portB)
      expect(await client.subscribe('project:1')).toMatchObject({ op: 'subscribed' })
      const res = await fetch(`http://127.0.0.1:${portA}/publish/project:1`, { method: 'POST', body: '{"title":"Hero"}' })
      expect(res.status).toBe(201)
      const published = await res.json() as { id: string; node: number }
      expect(published.node).toBe(portA)
      expect(await client.op('event')).toMatchObject({ topic: 'project:1', id: published.id, type: 'changed', data: { title: 'Hero' } })
    } finally {
      client?.close()
      await Promise.all(children.map(async (c) => {
        const exited = once(c, 'exit')
        c.kill('SIGTERM')
        await exited
      }))
      const redis = await connectRedis()
      await deleteKeys(redis, prefix)
      await redis.close()
    }
  }, 30_000)
})
