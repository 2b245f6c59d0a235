/**
 * Presence and soft locks over real sockets on one node (issue #10), with
 * short test timings: tabs, not sockets or users; the leave grace; locks
 * refused with the holder, taken over with an immediate notice, kept through
 * a drop for the same tab and released after the grace; authorisation.
 */
import type { IncomingMessage } from 'node:http'
import { fixture, type Fixture } from '../helpers/fixture'
import type { TestClient } from '../helpers/net'
import type { RealtimeOptions } from '../../lib/types'
import { publicTab } from '../../lib/collab/collab'

/** What others see of `user`'s tab `tab`. */
const pub = (user: string, tab: string) => publicTab(user, tab)

let f: Fixture
afterEach(async () => { await f?.close() })

const as = (user: string) => ({ headers: { 'x-user': user } })
const TIMING = { leaveGraceMs: 300, lockGraceMs: 500, leaseMs: 3000 }

async function cms(options: RealtimeOptions<IncomingMessage> = {}): Promise<Fixture> {
  return fixture({
    authenticate: (req) => {
      const u = req.headers['x-user']
      return typeof u === 'string' ? { id: u, name: u.toUpperCase() } : null
    },
    authorize: (user, topic) => !topic.startsWith('secret:') || (user as { id: string }).id === 'boss',
    ...options,
    collab: { ...TIMING, profile: (u) => ({ name: (u as { name: string }).name }), ...options.collab },
  })
}

interface Member { user: string; tab: string; meta: unknown; info?: unknown }
interface PresenceFrame { op: 'presence'; topic: string; members: Member[]; lock: { user: string; tab: string; since: number } | null }

/** The next `presence` frame for `topic` that satisfies `pred`. */
async function presence(c: TestClient, topic: string, pred: (p: PresenceFrame) => boolean = () => true, timeoutMs = 3000): Promise<PresenceFrame> {
  return (await c.next((fr) => fr.op === 'presence' && fr.topic === topic && pred(fr as unknown as PresenceFrame), timeoutMs)) as unknown as PresenceFrame
}

const tabs = (p: PresenceFrame) => p.members.map((m) => `${m.user}/${m.tab}`).sort()

async function join(c: TestClient, topic: string, tab: string, meta: unknown = null) {
  c.send({ op: 'presence', topic, tab, meta })
  return c.op('present')
}

describe('presence', () => {
  test('tabs are members: a second tab of a user is one more entry of the same user, not someone else', async () => {
    f = await cms()
    const anna = await f.connect(as('anna'))
    expect(await join(anna, 'item:7', 'anna-tab-1', { field: 'title' })).toEqual({ op: 'present', topic: 'item:7', user: 'anna', tab: pub('anna', 'anna-tab-1') })
    expect(tabs(await presence(anna, 'item:7'))).toEqual([`anna/${pub('anna', 'anna-tab-1')}`].sort())
    const ben = await f.connect(as('ben'))
    await join(ben, 'item:7', 'ben-tab-1')
    const anna2 = await f.connect(as('anna'))
    await join(anna2, 'item:7', 'anna-tab-2')
    const seen = await presence(ben, 'item:7', (p) => p.members.length === 3)
    expect(tabs(seen)).toEqual([`anna/${pub('anna', 'anna-tab-1')}`, `anna/${pub('anna', 'anna-tab-2')}`, `ben/${pub('ben', 'ben-tab-1')}`].sort())
    expect(seen.members.find((m) => m.tab === pub('anna', 'anna-tab-1'))).toEqual({ user: 'anna', tab: pub('anna', 'anna-tab-1'), meta: { field: 'title' }, info: { name: 'ANNA' } })
    expect(await f.rt.presence('item:7')).toHaveLength(3)
  })

  test('a closed tab shows as gone after the grace, not before; an explicit leave is immediate; the other tab stays', async () => {
    f = await cms()
    const ben = await f.connect(as('ben'))
    await join(ben, 'item:7', 'ben-tab-1')
    const anna1 = await f.connect(as('anna'))
    await join(anna1, 'item:7', 'anna-tab-1')
    const anna2 = await f.connect(as('anna'))
    await join(anna2, 'item:7', 'anna-tab-2')
    await presence(ben, 'item:7', (p) => p.members.length === 3)
    const t0 = Date.now()
    anna2.close() // no leave: the tab crashed or the network dropped
    await presence(ben, 'item:7', (p) => p.members.length === 2)
    const gone = Date.now() - t0
    expect(gone).toBeGreaterThanOrEqual(TIMING.leaveGraceMs - 20)
    expect(gone).toBeLessThan(TIMING.leaveGraceMs + 1000)
    const t1 = Date.now()
    anna1.send({ op: 'leave', topic: 'item:7' })
    const after = await presence(ben, 'item:7', (p) => p.members.length === 1)
    expect(Date.now() - t1).toBeLessThan(150)
    expect(tabs(after)).toEqual([`ben/${pub('ben', 'ben-tab-1')}`].sort())
  })

  test('the same tab reconnecting within the grace never shows as gone', async () => {
    f = await cms()
    const ben = await f.connect(as('ben'))
    await join(ben, 'item:7', 'ben-tab-1')
    const anna = await f.connect(as('anna'))
    await join(anna, 'item:7', 'anna-tab-1')
    await presence(ben, 'item:7', (p) => p.members.length === 2)
    anna.close()
    await new Promise((r) => setTimeout(r, 100))
    const again = await f.connect(as('anna'))
    await join(again, 'item:7', 'anna-tab-1')
    await new Promise((r) => setTimeout(r, TIMING.leaveGraceMs + 200))
    // Not one presence frame with anna missing.
    expect(ben.frames.filter((fr) => fr.op === 'presence' && (fr as unknown as PresenceFrame).members.length < 2)).toEqual([])
    expect(await f.rt.presence('item:7')).toHaveLength(2)
  })

  test('update changes what others see; frames go only to those present, and only on change', async () => {
    f = await cms()
    const anna = await f.connect(as('anna'))
    await join(anna, 'item:7', 'anna-tab-1', { field: 'title' })
    const ben = await f.connect(as('ben'))
    await join(ben, 'item:7', 'ben-tab-1')
    const bystander = await f.connect(as('carl'))
    await bystander.subscribe('item:7') // subscribed to events, not present
    anna.send({ op: 'presence', topic: 'item:7', tab: 'anna-tab-1', meta: { field: 'body' } })
    const p = await presence(ben, 'item:7', (x) => x.members.some((m) => (m.meta as { field?: string } | null)?.field === 'body'))
    expect(p.members).toHaveLength(2)
    await new Promise((r) => setTimeout(r, 100))
    expect(bystander.frames.filter((fr) => fr.op === 'presence')).toEqual([])
  })
})

describe('soft locks', () => {
  test('refused with the holder and since; takeover moves it and the old holder is told at once, with who', async () => {
    f = await cms()
    const anna = await f.connect(as('anna'))
    await join(anna, 'item:7', 'anna-tab-1')
    const ben = await f.connect(as('ben'))
    await join(ben, 'item:7', 'ben-tab-1')
    anna.send({ op: 'lock', key: 'item:7', tab: 'anna-tab-1' })
    expect(await anna.op('lock')).toEqual({ op: 'lock', key: 'item:7', result: 'held' })
    const p = await presence(ben, 'item:7', (x) => x.lock !== null)
    expect(p.lock).toMatchObject({ user: 'anna', tab: pub('anna', 'anna-tab-1'), info: { name: 'ANNA' } })
    ben.send({ op: 'lock', key: 'item:7', tab: 'ben-tab-1' })
    const refused = await ben.op('lock')
    expect(refused).toMatchObject({ result: 'refused', holder: { user: 'anna', tab: pub('anna', 'anna-tab-1') } })
    expect(Math.abs(Date.now() - (refused as unknown as { holder: { since: number } }).holder.since)).toBeLessThan(5000)
    const t0 = Date.now()
    ben.send({ op: 'lock', key: 'item:7', tab: 'ben-tab-1', takeover: true })
    expect(await ben.op('lock')).toMatchObject({ result: 'held' })
    expect(await anna.op('lock-lost')).toMatchObject({ key: 'item:7', by: { user: 'ben', tab: pub('ben', 'ben-tab-1') } })
    expect(Date.now() - t0).toBeLessThan(200)
    expect((await presence(anna, 'item:7', (x) => x.lock?.user === 'ben')).lock).toMatchObject({ user: 'ben' })
    expect(await f.rt.locks.holder('item:7')).toMatchObject({ user: 'ben' })
  })

  test('a second tab of the holder is refused too (the lock is the tab\'s, so no "locked by yourself" surprise is silent)', async () => {
    f = await cms()
    const tab1 = await f.connect(as('anna'))
    const tab2 = await f.connect(as('anna'))
    tab1.send({ op: 'lock', key: 'item:7', tab: 'anna-tab-1' })
    await tab1.op('lock')
    tab2.send({ op: 'lock', key: 'item:7', tab: 'anna-tab-2' })
    expect(await tab2.op('lock')).toMatchObject({ result: 'refused', holder: { user: 'anna', tab: pub('anna', 'anna-tab-1') } })
  })

  test('unlock frees it at once; a dropped holder keeps it through the grace, the same tab takes it back, else it is freed', async () => {
    f = await cms()
    const ben = await f.connect(as('ben'))
    await join(ben, 'item:7', 'ben-tab-1')
    let anna = await f.connect(as('anna'))
    anna.send({ op: 'lock', key: 'item:7', tab: 'anna-tab-1' })
    await anna.op('lock')
    anna.send({ op: 'unlock', key: 'item:7' })
    await anna.op('unlocked')
    expect(await f.rt.locks.holder('item:7')).toBeNull()
    // Take it again, then drop without a word.
    anna.send({ op: 'lock', key: 'item:7', tab: 'anna-tab-1' })
    await anna.op('lock')
    anna.close()
    await new Promise((r) => setTimeout(r, 200))
    expect(await f.rt.locks.holder('item:7')).toMatchObject({ user: 'anna' }) // within the grace
    anna = await f.connect(as('anna'))
    anna.send({ op: 'lock', key: 'item:7', tab: 'anna-tab-1' })
    expect(await anna.op('lock')).toMatchObject({ result: 'held' }) // the same tab, back in time
    await new Promise((r) => setTimeout(r, TIMING.lockGraceMs + 100))
    expect(await f.rt.locks.holder('item:7')).toMatchObject({ user: 'anna' }) // the old grace did not release the new hold
    ben.frames.splice(0) // the presence frames so far (one showed the unlock above, unless coalesced away): not the release timed here
    const t0 = Date.now()
    anna.close()
    await presence(ben, 'item:7', (x) => x.lock === null, 3000)
    const freed = Date.now() - t0
    expect(freed).toBeGreaterThanOrEqual(TIMING.lockGraceMs - 20)
    expect(freed).toBeLessThan(TIMING.lockGraceMs + 1000)
  })

  test('hooks: canLock and canTakeOver refuse with forbidden; rt.locks.release tells the holder', async () => {
    f = await cms({ collab: { canLock: (_u, key) => key !== 'item:frozen', canTakeOver: (u) => (u as { id: string }).id === 'boss' } })
    const anna = await f.connect(as('anna'))
    anna.send({ op: 'lock', key: 'item:frozen', tab: 'anna-tab-1' })
    expect(await anna.op('error')).toMatchObject({ code: 'forbidden', topic: 'item:frozen' })
    anna.send({ op: 'lock', key: 'item:7', tab: 'anna-tab-1' })
    await anna.op('lock')
    const ben = await f.connect(as('ben'))
    ben.send({ op: 'lock', key: 'item:7', tab: 'ben-tab-1', takeover: true })
    expect(await ben.op('error')).toMatchObject({ code: 'forbidden', message: expect.stringMatching(/take this lock over/) })
    const boss = await f.connect(as('boss'))
    boss.send({ op: 'lock', key: 'item:7', tab: 'boss-tab-1', takeover: true })
    expect(await boss.op('lock')).toMatchObject({ result: 'held' })
    expect(await anna.op('lock-lost')).toMatchObject({ by: { user: 'boss' } })
    expect(await f.rt.locks.release('item:7')).toBe(true)
    expect(await boss.op('lock-lost')).toMatchObject({ key: 'item:7', by: null })
  })
})

describe('tab ids', () => {
  test("nobody can pose as another's tab: the id others see is not the one that reclaims", async () => {
    f = await cms()
    const anna = await f.connect(as('anna'))
    await join(anna, 'item:7', 'anna-secret-tab')
    anna.send({ op: 'lock', key: 'item:7', tab: 'anna-secret-tab' })
    await anna.op('lock')
    const ben = await f.connect(as('ben'))
    await join(ben, 'item:7', 'ben-tab-1')
    const seen = await presence(ben, 'item:7', (p) => p.members.length === 2 && p.lock !== null)
    const annasTab = seen.lock!.tab
    expect(annasTab).not.toBe('anna-secret-tab') // the client's own id is never shown
    // Ben replays what he saw as if it were his own tab id: no reclaim, no overwrite.
    ben.send({ op: 'lock', key: 'item:7', tab: annasTab })
    expect(await ben.op('lock')).toMatchObject({ result: 'refused', holder: { user: 'anna' } })
    ben.send({ op: 'presence', topic: 'item:7', tab: annasTab, meta: { forged: true } })
    await ben.op('present')
    const after = await f.rt.presence('item:7')
    expect(after.find((m) => m.tab === annasTab)).toMatchObject({ user: 'anna', meta: null })
  })
})

describe('what a connection leaves behind', () => {
  test('one entry per connection and topic: presenting under new tab ids replaces, never piles up ghosts', async () => {
    f = await cms()
    const anna = await f.connect(as('anna'))
    for (let i = 0; i < 20; i++) await join(anna, 'item:7', `anna-tab-${String(i).padStart(2, '0')}`)
    const members = await f.rt.presence('item:7')
    expect(members.map((m) => m.tab)).toEqual([pub('anna', 'anna-tab-19')])
  })

  test('a socket that closes while its presence and lock are being authorised leaves neither behind', async () => {
    f = await cms({ authorize: async () => { await new Promise((r) => setTimeout(r, 150)); return true } })
    const anna = await f.connect(as('anna'))
    anna.send({ op: 'presence', topic: 'item:7', tab: 'anna-tab-1', meta: null })
    anna.send({ op: 'lock', key: 'item:7', tab: 'anna-tab-1' })
    await new Promise((r) => setTimeout(r, 20))
    anna.close()
    // Past the authorisation and both graces: nothing was left to be renewed forever.
    await new Promise((r) => setTimeout(r, 150 + TIMING.lockGraceMs + 200))
    expect(await f.rt.presence('item:7')).toEqual([])
    expect(await f.rt.locks.holder('item:7')).toBeNull()
  })
})

describe('authorisation', () => {
  test('a user not allowed on a topic can neither join or see its presence nor lock it', async () => {
    f = await cms()
    const boss = await f.connect(as('boss'))
    await join(boss, 'secret:plan', 'boss-tab-1')
    boss.send({ op: 'lock', key: 'secret:plan', tab: 'boss-tab-1' })
    await boss.op('lock')
    const anna = await f.connect(as('anna'))
    anna.send({ op: 'presence', topic: 'secret:plan', tab: 'anna-tab-1', meta: null })
    expect(await anna.op('error')).toMatchObject({ code: 'forbidden', topic: 'secret:plan' })
    anna.send({ op: 'lock', key: 'secret:plan', tab: 'anna-tab-1', takeover: true })
    expect(await anna.op('error')).toMatchObject({ code: 'forbidden', topic: 'secret:plan' })
    await new Promise((r) => setTimeout(r, 100))
    expect(anna.frames.filter((fr) => fr.op === 'presence' || fr.op === 'lock')).toEqual([])
    expect(await f.rt.presence('secret:plan')).toHaveLength(1)
    expect(await f.rt.locks.holder('secret:plan')).toMatchObject({ user: 'boss' })
  })

  test('reauthorize withdrawing a topic takes the tab out of its presence and releases its lock at once', async () => {
    const members = new Set(['anna', 'ben'])
    f = await cms({ authorize: (user, topic) => !topic.startsWith('project:') || members.has((user as { id: string }).id) })
    const anna = await f.connect(as('anna'))
    await join(anna, 'project:1', 'anna-tab-1')
    anna.send({ op: 'lock', key: 'project:1', tab: 'anna-tab-1' })
    await anna.op('lock')
    const ben = await f.connect(as('ben'))
    await join(ben, 'project:1', 'ben-tab-1')
    await presence(ben, 'project:1', (p) => p.members.length === 2 && p.lock !== null)
    members.delete('anna')
    expect(await f.rt.reauthorize({ user: 'anna' })).toBe(1)
    expect(await anna.op('unsubscribed')).toMatchObject({ topic: 'project:1', reason: 'forbidden' })
    const p = await presence(ben, 'project:1', (x) => x.members.length === 1 && x.lock === null, 1000)
    expect(tabs(p)).toEqual([`ben/${pub('ben', 'ben-tab-1')}`].sort())
  })

  test('malformed frames get an error and change nothing', async () => {
    f = await cms()
    const anna = await f.connect(as('anna'))
    for (const bad of [
      { op: 'presence', topic: 'item:7', tab: 'x' },
      { op: 'presence', topic: 'item 7', tab: 'anna-tab-1' },
      { op: 'presence', topic: 'item:7', tab: 'anna-tab-1', meta: 'x'.repeat(600) },
      { op: 'lock', key: 'item:7', tab: 'anna-tab-1', takeover: 'yes' },
      { op: 'lock', tab: 'anna-tab-1' },
    ]) {
      anna.send(bad)
      expect(await anna.op('error')).toMatchObject({ code: expect.stringMatching(/bad_request|too_large/) })
    }
    expect(await f.rt.presence('item:7')).toEqual([])
    expect(await f.rt.locks.holder('item:7')).toBeNull()
  })
})
