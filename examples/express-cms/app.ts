/**
 * The demo CMS API on Express 5: the same JSON API as examples/koa-cms, whose
 * writes publish live events. `server.ts` runs it; the tests import it.
 */
import express, { type NextFunction, type Request, type Response } from 'express'
import { realtime, type ExpressRealtimeOptions } from 'cms-realtime/express'

interface Item { id: number; title: string }
interface Comment { id: number; text: string; by: string }
interface Project { id: number; name: string; items: Item[]; comments: Comment[] }
interface DemoUser { id: string }

class HttpError extends Error {
  constructor(readonly status: number, message: string) { super(message) }
}

export function createApp(options: ExpressRealtimeOptions = {}) {
  const projects = new Map<number, Project>([
    [1, { id: 1, name: 'Spring campaign', items: [], comments: [] }],
    [2, { id: 2, name: 'Product pages', items: [], comments: [] }],
  ])
  let nextId = 1

  const app = express()
  // Demo sign-in: `?user=anna` or an `x-demo-user` header. A real CMS puts
  // its session user here (express-session, passport); cms-realtime only reads it.
  const userOf = (req: Request): DemoUser => (req as Request & { user: DemoUser }).user
  app.use((req, _res, next) => {
    const fromQuery = typeof req.query.user === 'string' ? req.query.user : undefined
    ;(req as Request & { user: DemoUser }).user = { id: req.get('x-demo-user') ?? fromQuery ?? 'anna' }
    next()
  })

  const rt = realtime({ authenticate: userOf, ...options })
  app.use(rt)
  app.use(express.json())

  const summary = (p: Project) => ({ id: p.id, name: p.name, itemCount: p.items.length, commentCount: p.comments.length })
  const find = (id: string | undefined): Project => {
    const p = projects.get(Number(id))
    if (p === undefined) throw new HttpError(404, 'no such project')
    return p
  }
  const text = (body: unknown, field: string): string => {
    const v = (body as Record<string, unknown> | undefined)?.[field]
    if (typeof v !== 'string' || v.trim() === '' || v.length > 500) throw new HttpError(400, `body needs "${field}": 1-500 characters`)
    return v.trim()
  }

  // Express 5 passes a rejected handler to the error middleware below.
  const api = express.Router()
  api.get('/projects', (_req, res) => { res.json([...projects.values()].map(summary)) })
  api.get('/projects/:id', (req, res) => { res.json(find(req.params.id)) })
  api.post('/projects/:id/items', async (req, res) => {
    const p = find(req.params.id)
    const item = { id: nextId++, title: text(req.body, 'title') }
    p.items.push(item)
    await rt.publish(`project:${p.id}`, 'item-added', { projectId: p.id, item })
    await rt.publish('projects', 'project-updated', summary(p))
    res.status(201).json(item)
  })
  api.post('/projects/:id/comments', async (req, res) => {
    const p = find(req.params.id)
    const comment = { id: nextId++, text: text(req.body, 'text'), by: userOf(req).id }
    p.comments.push(comment)
    await rt.publish(`project:${p.id}`, 'comment-added', { projectId: p.id, comment })
    await rt.publish('projects', 'project-updated', summary(p))
    res.status(201).json(comment)
  })
  api.post('/notifications/:userId', async (req, res) => {
    const userId = req.params.userId ?? ''
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(userId)) throw new HttpError(400, 'bad user id')
    const note = { id: nextId++, text: text(req.body, 'text'), from: userOf(req).id }
    await rt.publish(`notifications:${userId}`, 'notification', note)
    res.status(201).json(note)
  })
  app.use('/api', api)

  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    // body-parser's errors carry a status too (400 for bad JSON, 413 too large).
    const status = (err as { status?: unknown }).status
    if (typeof status === 'number' && status >= 400 && status < 500) {
      res.status(status).json({ error: (err as Error).message })
      return
    }
    console.error(err)
    res.status(500).json({ error: 'internal error' })
  })
  return { app, rt }
}
