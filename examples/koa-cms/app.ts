/**
 * The demo CMS: a Koa app with a small JSON API whose writes publish live
 * events. `server.ts` runs it; the tests import it.
 */
import Koa from 'koa'
import Router from '@koa/router'
import { bodyParser } from '@koa/bodyparser'
import { realtime, type KoaRealtimeOptions } from 'cms-realtime/koa'
import { servePage, USER_COOKIE } from './page'

interface Item { id: number; title: string }
interface Comment { id: number; text: string; by: string }
interface Project { id: number; name: string; items: Item[]; comments: Comment[] }

export function createApp(options: KoaRealtimeOptions = {}) {
  const projects = new Map<number, Project>([
    [1, { id: 1, name: 'Spring campaign', items: [], comments: [] }],
    [2, { id: 2, name: 'Product pages', items: [], comments: [] }],
  ])
  let nextId = 1

  const app = new Koa()
  // Demo sign-in: an `x-demo-user` header, `?user=anna`, or the `demo-user`
  // cookie the page's GET sets (WebSocket upgrades and SSE requests carry no
  // page query string, but do carry cookies). A real CMS puts its session
  // user here; cms-realtime only reads what this middleware set.
  app.use(async (ctx, next) => {
    ctx.state.user = { id: demoUser(ctx.get('x-demo-user'), ctx.query.user, ctx.cookies.get(USER_COOKIE)) }
    await next()
  })

  const rt = realtime({ authenticate: (ctx) => ctx.state.user, ...options })
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
  router.get('/projects/:id', (ctx) => { ctx.body = find(ctx.params.id!) })
  router.post('/projects/:id/items', async (ctx) => {
    const p = find(ctx.params.id!)
    const item = { id: nextId++, title: text(ctx.request.body, 'title') }
    p.items.push(item)
    await rt.publish(`project:${p.id}`, 'item-added', { projectId: p.id, item })
    await rt.publish('projects', 'project-updated', summary(p))
    ctx.status = 201
    ctx.body = item
  })
  router.post('/projects/:id/comments', async (ctx) => {
    const p = find(ctx.params.id!)
    const comment = { id: nextId++, text: text(ctx.request.body, 'text'), by: String(ctx.state.user.id) }
    p.comments.push(comment)
    await rt.publish(`project:${p.id}`, 'comment-added', { projectId: p.id, comment })
    await rt.publish('projects', 'project-updated', summary(p))
    ctx.status = 201
    ctx.body = comment
  })
  router.post('/notifications/:userId', async (ctx) => {
    const userId = ctx.params.userId!
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(userId)) ctx.throw(400, 'bad user id')
    const note = { id: nextId++, text: text(ctx.request.body, 'text'), from: String(ctx.state.user.id) }
    await rt.publish(`notifications:${userId}`, 'notification', note)
    ctx.status = 201
    ctx.body = note
  })
  app.use(router.routes()).use(router.allowedMethods())
  app.use(servePage)
  return { app, rt }
}

/** The first non-empty of header, query and cookie; `anna` when none is given. */
function demoUser(...candidates: unknown[]): string {
  for (const c of candidates) if (typeof c === 'string' && c !== '') return c
  return 'anna'
}
