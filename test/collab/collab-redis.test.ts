/**
 * Presence and soft locks across nodes sharing the real Redis (issue #10):
 * what one node sees, the other sees; a takeover on one node reaches the
 * holder on the other at once; a node killed with SIGKILL (its own process:
 * no close, no cleanup) leaves nothing behind longer than the lease; and a
 * node starting up wipes nothing.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import type { IncomingMessage } from 'node:http'
import { join } from 'node:path'
import { createRealtime, type Realtime } from 'cms-realtime'
import { RedisBus } from 'cms-realtime/redis'
import { connect, listen, type Frame, type TestClient } from '../helpers/net'
import { publicTab } from '../../lib/collab/collab'
import { connectRedis, deleteKeys, redisReachable, uniquePrefix, until, type TestRedis } from '../bus/redis-helpers'

const d = redisReachable('presence and locks across nodes') ? describe : describe.skip
const TIMING = { leaveGraceMs: 300, lockGraceMs: 500, leaseMs: 1500 }
const as = (user: string) => ({ headers: { 'x-user': user } })

interface PresenceFrame { members: Array<{ user: string; tab: string }>; lock: { user: string; tab: string } | null }
const presenceOf = (f: Frame) => f as unknown as PresenceFrame

d('presence and locks across nodes', () => {
  const prefix = uniquePrefix()
  let direct: TestRedis
  const cleanup: Array<() => unknown> = []

  beforeAll(async () => { direct = await connectRedis() })
  afterEach(async () => { for (const fn of cleanup.splice(0).reverse()) await fn() })
  afterAll(async () => {
    await deleteKeys(direct, prefix)
    await direct.close()
  })

  async function node(): Promise<{ rt: Realtime; port: number }> {
    const client = await connectRedis()
    const bus = new RedisBus(client, { keyPrefix: prefix })
    const rt = createRealtime({ bus, authenticate: (req: IncomingMessage) => ({ id: String(req.headers['x-user']) }), collab: TIMING })
    const srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(404).end() })
    rt.attach(srv.server)
    cleanup.push(() => client.destroy(), () => bus.close(), () => srv.close(), () => rt.close(100))
    await until(() => bus.connected, 3000, 'bus connected')
    return { rt, port: srv.port }
  }

  /** A node in its own process, to be killed. */
  async function processNode(): Promise<{ port: number; child: ChildProcess }> {
    const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, 'node-main.ts'), prefix, JSON.stringify(TIMING)], {
      cwd: join(__dirname, '..', '..'), stdio: ['ignore', 'pipe', 'inherit'],
    })
    cleanup.push(() => { if (child.exitCode === null) child.kill('SIGKILL') })
    const [line] = (await once(child.stdout!, 'data')) as [Buffer]
    return { port: (JSON.parse(String(line)) as { port: number }).port, child }
  }

  async function client(port: number, user: string): Promise<TestClient> {
    const c = await connect(port, as(user))
    cleanup.push(() => c.close())
    return c
  }

  const presence = (c: TestClient, pred: (p: PresenceFrame) => boolean, timeoutMs = 3000) =>
    c.next((f) => f.op === 'presence' && pred(presenceOf(f)), timeoutMs).then(presenceOf)

  test('presence and the lock agree on both nodes; a takeover on B reaches the holder on A at once', async () => {
    const a = await node()
    const b = await node()
    const anna = await client(a.port, 'anna')
    anna.send({ op: 'presence', topic: 'item:1', tab: 'anna-tab-1', meta: null })
    anna.send({ op: 'lock', key: 'item:1', tab: 'anna-tab-1' })
    expect(await anna.op('lock')).toMatchObject({ result: 'held' })
    const ben = await client(b.port, 'ben')
    ben.send({ op: 'presence', topic: 'item:1', tab: 'ben-tab-1', meta: null })
    const seenByBen = await presence(ben, (p) => p.members.length === 2 && p.lock !== null)
    expect(seenByBen.lock).toMatchObject({ user: 'anna', tab: publicTab('anna', 'anna-tab-1') })
    await presence(anna, (p) => p.members.length === 2)
    expect((await a.rt.presence('item:1')).map((m) => m.tab)).toEqual((await b.rt.presence('item:1')).map((m) => m.tab))
    ben.send({ op: 'lock', key: 'item:1', tab: 'ben-tab-1' })
    expect(await ben.op('lock')).toMatchObject({ result: 'refused', holder: { user: 'anna' } })
    const t0 = Date.now()
    ben.send({ op: 'lock', key: 'item:1', tab: 'ben-tab-1', takeover: true })
    expect(await ben.op('lock')).toMatchObject({ result: 'held' })
    expect(await anna.op('lock-lost')).toMatchObject({ key: 'item:1', by: { user: 'ben', tab: publicTab('ben', 'ben-tab-1') } })
    const took = Date.now() - t0
    console.log(`takeover on node B → lock-lost at node A's holder: ${took} ms`)
    expect(took).toBeLessThan(500)
    expect(await a.rt.locks.holder('item:1')).toMatchObject({ user: 'ben' })
  })

  test('the node serving the holder is killed (SIGKILL): its presence and lock are gone within the lease, and the lock can be taken', async () => {
    const doomed = await processNode()
    const b = await node()
    const anna = await client(doomed.port, 'anna')
    anna.send({ op: 'presence', topic: 'item:2', tab: 'anna-tab-1', meta: null })
    anna.send({ op: 'lock', key: 'item:2', tab: 'anna-tab-1' })
    expect(await anna.op('lock')).toMatchObject({ result: 'held' })
    const ben = await client(b.port, 'ben')
    ben.send({ op: 'presence', topic: 'item:2', tab: 'ben-tab-1', meta: null })
    await presence(ben, (p) => p.members.length === 2 && p.lock?.user === 'anna')
    const t0 = Date.now()
    doomed.child.kill('SIGKILL')
    await presence(ben, (p) => p.members.length === 1 && p.lock === null, TIMING.leaseMs * 3)
    const freed = Date.now() - t0
    console.log(`node killed → presence and lock freed on the other node in ${freed} ms (lease ${TIMING.leaseMs} ms)`)
    expect(freed).toBeLessThan(TIMING.leaseMs * 2)
    ben.send({ op: 'lock', key: 'item:2', tab: 'ben-tab-1' })
    expect(await ben.op('lock')).toMatchObject({ result: 'held' })
  })

  test("a tab that drops and reconnects to another node within the grace keeps presence and lock: the old node's grace removes nothing", async () => {
    const a = await node()
    const b = await node()
    const anna = await client(a.port, 'anna')
    anna.send({ op: 'presence', topic: 'item:4', tab: 'anna-tab-1', meta: null })
    anna.send({ op: 'lock', key: 'item:4', tab: 'anna-tab-1' })
    expect(await anna.op('lock')).toMatchObject({ result: 'held' })
    anna.close() // dropped without a word; node A starts its graces
    const again = await client(b.port, 'anna')
    again.send({ op: 'presence', topic: 'item:4', tab: 'anna-tab-1', meta: null })
    again.send({ op: 'lock', key: 'item:4', tab: 'anna-tab-1' })
    expect(await again.op('lock')).toMatchObject({ result: 'held' })
    // Past both of node A's graces.
    await new Promise((r) => setTimeout(r, TIMING.lockGraceMs + 300))
    expect(again.frames.filter((f) => f.op === 'lock-lost')).toEqual([])
    expect(await b.rt.locks.holder('item:4')).toMatchObject({ user: 'anna', tab: publicTab('anna', 'anna-tab-1') })
    expect((await b.rt.presence('item:4')).map((m) => m.user)).toEqual(['anna'])
  })

  test('a node that starts (or restarts) wipes nothing: locks and presence held through other nodes stay', async () => {
    const a = await node()
    const anna = await client(a.port, 'anna')
    anna.send({ op: 'presence', topic: 'item:3', tab: 'anna-tab-1', meta: null })
    anna.send({ op: 'lock', key: 'item:3', tab: 'anna-tab-1' })
    await anna.op('lock')
    const restarted = await processNode()
    const ben = await client(restarted.port, 'ben')
    ben.send({ op: 'presence', topic: 'item:3', tab: 'ben-tab-1', meta: null })
    const p = await presence(ben, (x) => x.members.length === 2)
    expect(p.lock).toMatchObject({ user: 'anna' })
    // Well past a lease: node A keeps renewing what it serves.
    await new Promise((r) => setTimeout(r, TIMING.leaseMs * 1.5))
    expect(await a.rt.locks.holder('item:3')).toMatchObject({ user: 'anna' })
    expect((await a.rt.presence('item:3')).map((m) => m.user).sort()).toEqual(['anna', 'ben'])
  })
})
