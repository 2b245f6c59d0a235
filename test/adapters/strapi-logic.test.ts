/**
 * cms-realtime/strapi's own rules, with a stand-in for the few Strapi APIs it
 * touches (the real Strapi runs in `npm run test:strapi`): a publish waits
 * for the surrounding transaction's commit and never happens on rollback; a
 * failing publish never fails the write; topics map to Strapi permissions.
 * Each rule is documented in the README ("Use it in Strapi").
 */
import { once } from 'node:events'
import { createServer } from 'node:http'
import Koa from 'koa'
import WebSocket from 'ws'
import { listen, type Listening } from '../helpers/net'
import { PROTOCOL } from '../../lib/types'
import type { Bus, BusEvent } from '../../lib/types'
import { MemoryBus } from '../../lib/bus/memory'
import { strapiRealtime, type StrapiLike, type StrapiAuth, type StrapiRealtimeOptions } from '../../lib/integrations/strapi'

type DocMiddleware = Parameters<StrapiLike['documents']['use']>[0]

/** Stored rows by content type, for the reads the integration makes (the draft before an update, a user's standing). */
type Rows = Map<string, Array<Record<string, unknown>>>

function fakeStrapi(bus?: Bus, rows: Rows = new Map(), options: Partial<StrapiRealtimeOptions> = {}) {
  let middleware: DocMiddleware | undefined
  let request: unknown
  let commitHooks: Array<() => void> | null = null
  const container = new Map<string, unknown>()
  const strapi: StrapiLike = {
    server: { use: () => undefined, httpServer: createServer() },
    documents: { use: (mw) => { middleware = mw } },
    db: {
      inTransaction: () => commitHooks !== null,
      transaction: async (cb) => cb({ onCommit: (fn) => commitHooks!.push(fn) }),
      query: (uid) => ({
        // Every user is active, with a role: the socket tests below are about the strategies' abilities.
        findOne: async () => (uid.endsWith('user') ? { id: 1, isActive: true, role: { id: 1 } } : uid === 'admin::api-token' ? { id: 3, type: 'read-only', permissions: [] } : null),
        findMany: async (q) => (rows.get(uid) ?? []).filter((r) => r.documentId === (q.where as { documentId?: unknown }).documentId),
      }),
      lifecycles: { subscribe: () => undefined },
    },
    requestContext: { get: () => request },
    config: { get: (path, fallback) => (path === 'server.app.keys' ? ['k1k1k1k1k1k1k1k1', 'k2'] : fallback) },
    add: (name, resolver) => container.set(name, resolver()),
    get: (name) => container.get(name),
  }
  const live = strapiRealtime({ contentTypes: ['api::article.article'], ...options, realtime: { ...(bus === undefined ? {} : { bus }), ...options.realtime } })
  live.register({ strapi })
  return {
    live,
    strapi,
    /** A document-service call: `write` stands for Strapi's own work (next()). */
    call: (action: string, write: () => Promise<unknown>, uid = 'api::article.article', params: Record<string, unknown> = {}) =>
      middleware!({ uid, action, params }, write),
    /** The request in progress, as Strapi's request context holds it. */
    asRequest(ctx: unknown) { request = ctx },
    /** Run `fn` as inside strapi.db.transaction; commit or roll back afterwards. */
    async inTransaction(fn: () => Promise<unknown>, outcome: 'commit' | 'rollback') {
      commitHooks = []
      try {
        await fn()
      } finally {
        const hooks = commitHooks
        commitHooks = null
        if (outcome === 'commit') for (const h of hooks) h()
      }
    },
  }
}

/** Every event published to the bus. */
function recordingBus(): { bus: MemoryBus; seen: BusEvent[] } {
  const bus = new MemoryBus()
  const seen: BusEvent[] = []
  const publish = bus.publish.bind(bus)
  bus.publish = (topic, type, data) => {
    const e = publish(topic, type, data)
    if (!('then' in e)) seen.push(e)
    return e
  }
  return { bus, seen }
}

const flush = () => new Promise((r) => setImmediate(r))

test('a change inside a transaction is published when it commits, and never when it rolls back', async () => {
  const { bus, seen } = recordingBus()
  const s = fakeStrapi(bus)
  await s.inTransaction(async () => {
    await s.call('create', async () => ({ documentId: 'd1', title: 'kept' }))
    await flush()
    expect(seen).toEqual([]) // not before the commit
  }, 'commit')
  await flush()
  expect(seen.map((e) => [e.topic, e.type])).toEqual([
    ['strapi:api::article.article', 'created'], ['strapi:api::article.article:d1', 'created'],
  ])
  await s.inTransaction(() => s.call('update', async () => ({ documentId: 'd1', title: 'lost' })), 'rollback')
  await flush()
  expect(seen).toHaveLength(2)
  await s.live.destroy()
})

test('a publish that fails (the bus throws or rejects) never fails the saved write', async () => {
  const failing: Bus = Object.assign(new MemoryBus(), {
    publish: () => { throw new Error('bus down') },
  })
  const s = fakeStrapi(failing)
  await expect(s.call('create', async () => ({ documentId: 'd2' }))).resolves.toEqual({ documentId: 'd2' })
  const rejecting: Bus = Object.assign(new MemoryBus(), {
    publish: () => Promise.reject(new Error('timeout')),
  })
  const r = fakeStrapi(rejecting)
  await expect(r.call('update', async () => ({ documentId: 'd3' }))).resolves.toEqual({ documentId: 'd3' })
  await flush() // the rejection is caught: jest would report an unhandled one
  await s.live.destroy()
  await r.live.destroy()
})

test("the write's own failure propagates unchanged, and nothing is published", async () => {
  const { bus, seen } = recordingBus()
  const s = fakeStrapi(bus)
  await expect(s.call('create', () => Promise.reject(new Error('unique violation')))).rejects.toThrow('unique violation')
  await flush()
  expect(seen).toEqual([])
  await s.live.destroy()
})

test('only the listed content types and the document actions are published', async () => {
  const { bus, seen } = recordingBus()
  const s = fakeStrapi(bus)
  await s.call('findMany', async () => [{ documentId: 'd1' }])
  await s.call('create', async () => ({ documentId: 'u1' }), 'plugin::users-permissions.user')
  await s.call('delete', async () => ({ documentId: 'd9', entries: [] }))
  await flush()
  expect(seen.map((e) => e.type)).toEqual(['deleted', 'deleted'])
  expect(JSON.parse(seen[0]!.data)).toEqual({ uid: 'api::article.article', documentId: 'd9', locale: null, action: 'delete', status: null, changed: [], by: null })
  expect(s.strapi.get('realtime')).toBe(s.live.rt)
  await s.live.destroy()
})

test("an update says which stored fields changed (not what the form sent), who made it and the version's status; values only through data()", async () => {
  const { bus, seen } = recordingBus()
  const stored = { id: 4, documentId: 'd5', title: 'Old', body: 'Same', updatedAt: '2026-12-07T10:00:00.000Z', publishedAt: null }
  const s = fakeStrapi(bus, new Map([['api::article.article', [stored]]]))
  s.asRequest({ state: { auth: { strategy: { name: 'admin' }, credentials: { id: 2, firstname: 'Ben', lastname: 'Hale', email: 'ben@example.com' } } } })
  const after = { ...stored, title: 'New', updatedAt: '2026-12-07T10:00:05.000Z' }
  // The Content Manager sends the whole form: both fields, and the meta fields.
  await s.call('update', async () => after, 'api::article.article', { documentId: 'd5', data: { title: 'New', body: 'Same', updatedAt: 'x' } })
  s.asRequest({ state: { auth: { strategy: { name: 'users-permissions' }, credentials: { id: 9, username: 'reader9' } } } })
  await s.call('publish', async () => ({ documentId: 'd5', entries: [] }), 'api::article.article', { documentId: 'd5' })
  s.asRequest(undefined)
  await s.call('create', async () => ({ documentId: 'd6', title: 'T', updatedAt: '2026-12-07T10:00:06.000Z', publishedAt: null }), 'api::article.article', { data: { title: 'T' } })
  await flush()
  const data = seen.filter((e) => e.topic === 'strapi:api::article.article').map((e) => JSON.parse(e.data) as Record<string, unknown>)
  expect(data[0]).toEqual({
    uid: 'api::article.article', documentId: 'd5', locale: null, action: 'update', status: 'draft', changed: ['title'],
    by: { id: 'admin:2', kind: 'admin', name: 'Ben Hale' }, updatedBy: 'admin:2', revision: Date.parse(after.updatedAt), updatedAt: after.updatedAt,
  })
  expect(JSON.stringify(data[0])).not.toContain('New') // no value, and no email
  expect(JSON.stringify(data[0])).not.toContain('ben@example.com')
  expect(data[1]).toMatchObject({ action: 'publish', status: 'published', by: { id: 'user:9', kind: 'user', name: 'reader9' } })
  expect(data[2]).toMatchObject({ action: 'create', status: 'draft', changed: ['title'], by: null })
  await s.live.destroy()
})

describe('authentication and authorisation follow Strapi (its auth service and permissions), over real sockets', () => {
  const tokens = new Map<string, { type: 'admin' | 'content-api'; auth: StrapiAuth; session?: string }>()
  const admin = (can: string[], id = 1): StrapiAuth => ({
    strategy: { name: 'admin' }, credentials: { id }, ability: { can: (action, subject) => can.includes(`${action} ${subject}`) },
  })
  const reader = (scopes: string[], name = 'users-permissions', credentials: unknown = { id: 7 }): StrapiAuth => ({
    strategy: { name, verify: (_a, config) => { if (!config.scope!.every((sc) => scopes.includes(sc))) throw new Error('Forbidden') } },
    credentials,
    ability: null,
  })
  tokens.set('editor', { type: 'admin', auth: admin(['plugin::content-manager.explorer.read api::article.article']), session: 's1' })
  tokens.set('author-without-read', { type: 'admin', auth: admin([], 2) })
  tokens.set('writer', { type: 'admin', auth: admin(['plugin::content-manager.explorer.read api::article.article', 'plugin::content-manager.explorer.update api::article.article'], 4) })
  tokens.set('reader-find', { type: 'content-api', auth: reader(['api::article.article.find']) })
  tokens.set('reader-findOne', { type: 'content-api', auth: reader(['api::article.article.findOne']) })
  tokens.set('api-token', { type: 'content-api', auth: reader(['api::article.article.find'], 'api-token', { id: 3 }) })
  tokens.set('public', { type: 'content-api', auth: reader(['api::article.article.find'], 'users-permissions', null) })

  let srv: Listening
  let live: ReturnType<typeof strapiRealtime>
  beforeAll(async () => {
    const s = fakeStrapi()
    live = s.live
    // Strapi's auth service: runs the strategies named for the route's type; unauthorized() sets a 401.
    s.strapi.add('auth', () => ({
      authenticate: async (ctx: Koa.Context, next: () => Promise<void>) => {
        const route = ctx.state.route as { info: { type: string }; config: { auth: { strategies: string[] } } }
        const t = tokens.get(ctx.get('authorization').replace(/^Bearer /, ''))
        if (t === undefined || t.type !== route.info.type || !route.config.auth.strategies.includes(t.auth.strategy.name)) {
          ctx.status = 401
          return
        }
        ctx.state.auth = t.auth
        if (t.session !== undefined) ctx.state.session = { id: t.session }
        return next()
      },
    }))
    const app = new Koa()
    // Lazily, as Strapi does: Koa composes its middleware when callback() is called.
    let handler: ReturnType<Koa['callback']> | undefined
    const httpServer = createServer((req, res) => (handler ??= app.callback())(req, res))
    live.bootstrap({ strapi: { ...s.strapi, server: { use: (mw) => app.use(mw), httpServer } } })
    srv = await listen(httpServer)
  })
  afterAll(async () => {
    await live.destroy()
    await srv.close()
  })

  async function answer(token: string | undefined, topic: string): Promise<string> {
    const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/realtime`, PROTOCOL, token === undefined ? {} : { headers: { Authorization: `Bearer ${token}` } })
    const status = await new Promise<number>((resolve) => {
      ws.once('open', () => resolve(101))
      ws.once('unexpected-response', (_q, res) => resolve(res.statusCode ?? 0))
      ws.on('error', () => {})
    })
    if (status !== 101) return String(status)
    ws.send(JSON.stringify({ op: 'subscribe', topic }))
    const [frame] = (await once(ws, 'message')) as [Buffer]
    ws.close()
    const f = JSON.parse(String(frame)) as { op: string; code?: string }
    return f.op === 'error' ? f.code! : f.op
  }

  test('an admin: the content-manager read permission on that type; nothing outside contentTypes', async () => {
    expect(await answer('editor', 'strapi:api::article.article')).toBe('subscribed')
    expect(await answer('editor', 'strapi:api::article.article:abc123')).toBe('subscribed')
    expect(await answer('author-without-read', 'strapi:api::article.article')).toBe('forbidden')
    expect(await answer('editor', 'strapi:api::page.page')).toBe('forbidden')
    expect(await answer('editor', 'project:1')).toBe('forbidden') // not a Strapi topic, no `authorize` option
    expect(await answer('editor', 'strapi:api::article.article:a:b')).toBe('forbidden')
  })

  test('a users-permissions user: find for the type, find or findOne for one document', async () => {
    expect(await answer('reader-find', 'strapi:api::article.article')).toBe('subscribed')
    expect(await answer('reader-findOne', 'strapi:api::article.article')).toBe('forbidden')
    expect(await answer('reader-findOne', 'strapi:api::article.article:abc')).toBe('subscribed')
  })

  test('a lock is for an admin who may edit the type: not for one who may only read it, nor for a users-permissions reader', async () => {
    const lock = async (token: string): Promise<string> => {
      const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/realtime`, PROTOCOL, { headers: { Authorization: `Bearer ${token}` } })
      await once(ws, 'open')
      ws.send(JSON.stringify({ op: 'lock', key: `strapi:api::article.article:doc${token.replace(/-/g, '')}`, tab: 'tab-0001' }))
      const [frame] = (await once(ws, 'message')) as [Buffer]
      ws.close()
      const f = JSON.parse(String(frame)) as { op: string; code?: string; result?: string }
      return f.op === 'error' ? f.code! : f.result!
    }
    expect(await lock('writer')).toBe('held')
    expect(await lock('editor')).toBe('forbidden') // may read, not update: could otherwise make an editor's form read-only
    expect(await lock('reader-find')).toBe('forbidden')
  })

  test('refused unless enabled: no token, an unknown token, API tokens, the public role', async () => {
    expect(await answer(undefined, 'strapi:api::article.article')).toBe('401')
    expect(await answer('nope', 'strapi:api::article.article')).toBe('401')
    expect(await answer('api-token', 'strapi:api::article.article')).toBe('401')
    expect(await answer('public', 'strapi:api::article.article')).toBe('401')
  })
})

describe('identities that were shared: anonymous visitors, credentials without an id', () => {
  /** A channel whose Strapi auth grants what `auth(ctx)` says (undefined: 401), and a way to open sockets from an address. */
  async function serve(options: Partial<StrapiRealtimeOptions>, auth: (authorization: string) => StrapiAuth | undefined) {
    const s = fakeStrapi(undefined, new Map(), options)
    s.strapi.add('auth', () => ({
      authenticate: async (ctx: Koa.Context, next: () => Promise<void>) => {
        const granted = auth(ctx.get('authorization'))
        // Strapi runs only the strategies the route names.
        const route = ctx.state.route as { config: { auth: { strategies: string[] } } }
        if (granted === undefined || !route.config.auth.strategies.includes(granted.strategy.name)) { ctx.status = 401; return }
        ctx.state.auth = granted
        return next()
      },
    }))
    const app = new Koa()
    let handler: ReturnType<Koa['callback']> | undefined
    const httpServer = createServer((req, res) => (handler ??= app.callback())(req, res))
    s.live.bootstrap({ strapi: { ...s.strapi, server: { use: (mw) => app.use(mw), httpServer } } })
    const srv = await listen(httpServer)
    const opened: WebSocket[] = []
    return {
      status: (localAddress: string, token?: string) => new Promise<number>((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/realtime`, PROTOCOL, { localAddress, headers: token === undefined ? {} : { Authorization: `Bearer ${token}` } })
        opened.push(ws)
        ws.once('open', () => resolve(101))
        ws.once('unexpected-response', (_q, res) => resolve(res.statusCode ?? 0))
        ws.on('error', () => {})
      }),
      async close() {
        for (const ws of opened) ws.terminate()
        await s.live.destroy()
        await srv.close()
      },
    }
  }
  const up = (credentials: unknown): StrapiAuth => ({ strategy: { name: 'users-permissions', verify: () => undefined }, credentials, ability: null })

  test("public: true: each anonymous visitor is their own user, so one address's connections are capped and the next visitor is still let in", async () => {
    const c = await serve({ public: true, realtime: { maxConnectionsPerUser: 2 } }, (h) => (h === '' ? up(null) : undefined))
    try {
      expect([await c.status('127.0.0.1'), await c.status('127.0.0.1'), await c.status('127.0.0.1')]).toEqual([101, 101, 429])
      // Another address is another visitor (they were all one `public` user before).
      expect(await c.status('127.0.0.2')).toBe(101)
    } finally {
      await c.close()
    }
  })

  test("apiTokens: true accepts Strapi 5's API-token strategy (`content-api-token`), checked against the token as stored", async () => {
    const token: StrapiAuth = { strategy: { name: 'content-api-token', verify: () => undefined }, credentials: { id: 3, type: 'read-only' }, ability: null }
    const c = await serve({ apiTokens: true }, (h) => (h === 'Bearer tok-3' ? token : undefined))
    try {
      expect(await c.status('127.0.0.1', 'tok-3')).toBe(101)
    } finally {
      await c.close()
    }
  })

  test('credentials without an id (a custom strategy): two users are two identities, told apart by their tokens', async () => {
    const c = await serve({ realtime: { maxConnectionsPerUser: 1 } }, (h) => (h.startsWith('Bearer noid-') ? up({ username: h.slice(7) }) : undefined))
    try {
      expect([await c.status('127.0.0.1', 'noid-1'), await c.status('127.0.0.1', 'noid-1')]).toEqual([101, 429])
      expect(await c.status('127.0.0.1', 'noid-2')).toBe(101) // was `user:unknown`, the same user as noid-1
    } finally {
      await c.close()
    }
  })
})
