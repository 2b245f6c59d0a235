/**
 * The demo CMS: a Koa app with a small JSON API whose writes publish live
 * events. `server.ts` runs it; the tests import it.
 */
import Koa from 'koa'
import Router from '@koa/router'
import { bodyParser } from '@koa/bodyparser'
import { realtime, type KoaRealtimeOptions } from 'cms-realtime/koa'
import { defaultAuthorize, staleEdit, userId } from 'cms-realtime'
import { servePage, USER_COOKIE, USER_ID } from './page'

/** `revision` and `updatedBy` drive the stale-edit warning. */
interface Item { id: number; title: string; body: string; revision: number; updatedBy: string }
interface Comment { id: number; text: string; by: string }
/** `removed`: users taken off the project; everyone else is a member (everyone is, at start). */
interface Project { id: number; name: string; items: Item[]; comments: Comment[]; removed: Set<string> }

export function createApp(options: KoaRealtimeOptions = {}) {
  const projects = new Map<number, Project>([
    [1, { id: 1, name: 'Spring campaign', items: [], comments: [], removed: new Set() }],
    [2, { id: 2, name: 'Product pages', items: [], comments: [], removed: new Set() }],
  ])
  const isMember = (p: Project | undefined, user: unknown): boolean => {
    const id = userId(user)
    return p !== undefined && id !== undefined && !p.removed.has(id)
  }
  let nextId = 1

  const app = new Koa()
  // A malformed request (an HTTP parser error, which Node has answered with
  // 400 already) or a client that resets its connection is the client's
  // fault, not the server's: Koa's default handler would print each one on
  // stderr, and a fuzzing client could fill the log. Everything else is
  // printed as Koa prints it.
  app.on('error', (err: Error & { code?: unknown }) => {
    const code = typeof err.code === 'string' ? err.code : ''
    if (code.startsWith('HPE_') || code === 'ECONNRESET' || code === 'EPIPE' || code === 'ECONNABORTED') return
    app.onerror(err)
  })
  // Demo sign-in: an `x-demo-user` header, `?user=anna`, or the `demo-user`
  // cookie the page's GET sets (WebSocket upgrades and SSE requests carry no
  // page query string, but do carry cookies); `anna` when none is given, so
  // curl and wscat work as they are. `POST /api/logout` leaves the cookie
  // saying "signed out": then there is no user, and the realtime channel
  // answers 401. A real CMS puts its session user here; cms-realtime only
  // reads what this middleware set.
  app.use(async (ctx, next) => {
    const cookie = ctx.cookies.get(USER_COOKIE)
    const id = demoUser(ctx.get('x-demo-user'), ctx.query.user) ?? (cookie === SIGNED_OUT ? undefined : cookie ?? 'anna')
    ctx.state.user = id === undefined || id === '' ? null : { id }
    await next()
  })

  const rt = realtime({
    authenticate: (ctx) => ctx.state.user,
    // Project topics follow membership, and so do their items' presence and
    // locks (`project:1/item:7`); `notifications:<id>` only its user.
    authorize: (user, topic) => {
      const m = /^project:(\d+)(?:\/item:\d+)?$/.exec(topic)
      return m === null ? defaultAuthorize(user, topic) : isMember(projects.get(Number(m[1])), user)
    },
    ...options,
  })
  app.use(rt)
  app.use(bodyParser())

  const summary = (p: Project) => ({ id: p.id, name: p.name, itemCount: p.items.length, commentCount: p.comments.length })
  const find = (id: string): Project => {
    const p = projects.get(Number(id))
    if (p === undefined) throw Object.assign(new Error('no such project'), { status: 404, expose: true })
    return p
  }
  const text = (body: unknown, field: string): string => {
    const v = (body as Record<string, unknown> | undefined)?.[field]
    if (typeof v !== 'string' || v.trim() === '' || v.length > 500) {
      throw Object.assign(new Error(`body needs "${field}": 1-500 characters`), { status: 400, expose: true })
    }
    return v.trim()
  }

  const router = new Router({ prefix: '/api' })
  router.get('/projects', (ctx) => { ctx.body = [...projects.values()].map(summary) })
  // Open connections: the tabs of one browser share one (see docs/client.md).
  router.get('/stats', (ctx) => { ctx.body = { connections: rt.stats().connections, fallbackStreams: rt.stats().fallbackStreams } })
  router.get('/projects/:id', (ctx) => {
    const p = find(ctx.params.id!)
    if (ctx.state.user !== null && !isMember(p, ctx.state.user)) ctx.throw(403, `you are not a member of project ${p.id}`)
    ctx.body = { id: p.id, name: p.name, items: p.items, comments: p.comments }
  })
  // Membership: removing a user takes the project's topic away from their
  // open pages at once (reauthorize), adding them back lets them subscribe again.
  router.put('/projects/:id/members/:user', async (ctx) => {
    const p = find(ctx.params.id!)
    p.removed.delete(member(ctx.params.user))
    ctx.status = 204
  })
  router.delete('/projects/:id/members/:user', async (ctx) => {
    const p = find(ctx.params.id!)
    p.removed.add(member(ctx.params.user))
    await rt.reauthorize({ topic: `project:${p.id}` })
    ctx.status = 204
  })
  // Demo sign-in and sign-out. Logout ends the session (the cookie) first,
  // then every open connection of that user (close 4401 / SSE `closed`).
  router.post('/login', (ctx) => {
    const id = member(text(ctx.request.body, 'user'))
    ctx.cookies.set(USER_COOKIE, id, { httpOnly: false, sameSite: 'lax', overwrite: true })
    ctx.body = { id }
  })
  router.post('/logout', (ctx) => {
    const id = userId(ctx.state.user)
    ctx.cookies.set(USER_COOKIE, SIGNED_OUT, { httpOnly: false, sameSite: 'lax', overwrite: true })
    ctx.body = { disconnected: id === undefined ? 0 : rt.disconnect({ user: id }, 'signed out') }
  })
  router.post('/projects/:id/items', async (ctx) => {
    const p = find(ctx.params.id!)
    const item: Item = { id: nextId++, title: text(ctx.request.body, 'title'), body: '', revision: 1, updatedBy: who(ctx) }
    p.items.push(item)
    await rt.publish(`project:${p.id}`, 'item-added', { projectId: p.id, item })
    await rt.publish('projects', 'project-updated', summary(p))
    ctx.status = 201
    ctx.body = item
  })
  // Save an item. The editor sends the revision it opened: if someone saved
  // since, 409 says who (the stale-edit warning, even when its socket was down).
  router.put('/projects/:id/items/:itemId', async (ctx) => {
    const p = find(ctx.params.id!)
    if (!isMember(p, ctx.state.user)) ctx.throw(403, `you are not a member of project ${p.id}`)
    const item = p.items.find((i) => i.id === Number(ctx.params.itemId))
    if (item === undefined) return ctx.throw(404, 'no such item')
    const body = ctx.request.body as { revision?: unknown; body?: unknown } | undefined
    const stale = staleEdit(item, body?.revision)
    if (stale !== null) {
      ctx.status = stale.status
      ctx.body = stale.body
      return
    }
    item.title = text(body, 'title')
    item.body = typeof body?.body === 'string' ? body.body.slice(0, 2000) : item.body
    item.revision++
    item.updatedBy = who(ctx)
    await rt.publish(`project:${p.id}`, 'item-updated', { projectId: p.id, item, revision: item.revision, updatedBy: item.updatedBy })
    ctx.body = item
  })
  router.post('/projects/:id/comments', async (ctx) => {
    const p = find(ctx.params.id!)
    const comment = { id: nextId++, text: text(ctx.request.body, 'text'), by: String(ctx.state.user?.id ?? 'anonymous') }
    p.comments.push(comment)
    await rt.publish(`project:${p.id}`, 'comment-added', { projectId: p.id, comment })
    await rt.publish('projects', 'project-updated', summary(p))
    ctx.status = 201
    ctx.body = comment
  })
  router.post('/notifications/:userId', async (ctx) => {
    const userId = ctx.params.userId!
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(userId)) ctx.throw(400, 'bad user id')
    const note = { id: nextId++, text: text(ctx.request.body, 'text'), from: String(ctx.state.user?.id ?? 'anonymous') }
    await rt.publish(`notifications:${userId}`, 'notification', note)
    ctx.status = 201
    ctx.body = note
  })
  app.use(router.routes()).use(router.allowedMethods())
  app.use(servePage)
  return { app, rt }
}

function who(ctx: Koa.Context): string {
  return String((ctx.state.user as { id?: string } | null)?.id ?? 'anonymous')
}

/** The demo cookie's value after logout (never a valid user id). */
const SIGNED_OUT = '-'

/** The first non-empty candidate. */
function demoUser(...candidates: unknown[]): string | undefined {
  for (const c of candidates) if (typeof c === 'string' && c !== '') return c
  return undefined
}

function member(id: unknown): string {
  if (typeof id !== 'string' || !USER_ID.test(id)) {
    throw Object.assign(new Error('a user id is 1-64 letters, digits, "_" or "-"'), { status: 400, expose: true })
  }
  return id
}
