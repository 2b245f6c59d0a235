/**
 * The demo page: `GET /` answers public/index.html (and remembers the demo
 * user in a cookie, so the page's WebSocket and SSE requests are made as
 * that user), `GET /app.js` and `/style.css` its module and styles. The
 * browser client itself comes from the middleware at /realtime/client.js.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Context, Next } from 'koa'

export const USER_COOKIE = 'demo-user'
export const USER_ID = /^[A-Za-z0-9_-]{1,64}$/

const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
}
const PUBLIC = join(__dirname, 'public')

export async function servePage(ctx: Context, next: Next): Promise<void> {
  const f = FILES[ctx.path]
  if (f === undefined || (ctx.method !== 'GET' && ctx.method !== 'HEAD')) return next()
  if (f.file === 'index.html') {
    // Opening the page signs in (as anna unless `?user=` says otherwise).
    const user = String(ctx.query.user ?? ctx.state.user?.id ?? 'anna')
    if (!USER_ID.test(user)) ctx.throw(400, 'the demo user id is 1-64 letters, digits, "_" or "-"')
    // Readable by the page (it shows who is signed in); a demo, not a session.
    ctx.cookies.set(USER_COOKIE, user, { httpOnly: false, sameSite: 'lax', overwrite: true })
  }
  ctx.type = f.type
  ctx.set('Cache-Control', 'no-cache')
  ctx.body = await readFile(join(PUBLIC, f.file))
}
