/**
 * The user type (issue #9, bug 5): inferred from what `authenticate`
 * returns, so a CMS's typed `authorize`, `revalidate` and selectors compile
 * (`npm test` type-checks this file; a regression fails there), and at run
 * time they receive exactly the object `authenticate` returned.
 */
import type { IncomingMessage } from 'node:http'
import { realtime as koaRealtime } from 'cms-realtime/koa'
import { realtime as expressRealtime } from 'cms-realtime/express'
import { createRealtime } from 'cms-realtime'
import { connect, listen } from './helpers/net'

interface Editor { id: string; role: 'editor' | 'admin'; projects: number[] }

function editorOf(header: string | undefined): Editor | null {
  return header === undefined ? null : { id: header, role: 'editor', projects: [1] }
}

test('authorize, revalidate and selectors are typed by what authenticate returns', async () => {
  const koa = koaRealtime({
    authenticate: (ctx) => editorOf(ctx.get('x-user') || undefined),
    authorize: (user, topic) => user.projects.some((p) => topic === `project:${p}`), // user: Editor
    revalidate: (user) => user.role !== 'admin',
  })
  expect(koa.disconnect((user) => user.role === 'admin')).toBe(0)
  // A typed callback written apart from the call compiles as it is.
  const canRead = (user: Editor, topic: string): boolean => user.role === 'admin' || topic === 'projects'
  const express = expressRealtime({ authenticate: (req) => editorOf(req.get('x-user')), authorize: canRead })
  // @ts-expect-error: an authorize for another user type than authenticate returns does not compile
  const wrong = koaRealtime({ authenticate: () => ({ id: 1 }), authorize: (user: Editor) => user.role === 'admin' })
  await Promise.all([koa.close(), express.close(), wrong.close()])

  // At run time, authorize gets the very object authenticate returned.
  const seen: Editor[] = []
  const rt = createRealtime({
    authenticate: (req: IncomingMessage) => editorOf(req.headers['x-user'] as string | undefined),
    authorize: (user, topic) => { seen.push(user); return user.projects.includes(Number(topic.split(':')[1])) },
  })
  const srv = await listen((req, res) => { if (!rt.handleRequest(req, res)) res.end() })
  rt.attach(srv.server)
  try {
    const c = await connect(srv.port, { headers: { 'x-user': 'anna' } })
    expect(await c.subscribe('project:1')).toMatchObject({ op: 'subscribed' })
    expect(await c.subscribe('project:2')).toMatchObject({ op: 'error', code: 'forbidden' })
    expect(seen).toEqual([{ id: 'anna', role: 'editor', projects: [1] }, { id: 'anna', role: 'editor', projects: [1] }])
    c.close()
  } finally {
    await rt.close(100)
    await srv.close()
  }
})
