/**
 * One app per framework, built the same way, so a single suite can run
 * against every adapter: a "session" middleware that sets the user from an
 * `x-user` header (or answers 401 itself when `gate` is on), the realtime
 * middleware whose `authenticate` reads that user, and a catch-all page.
 */
import { createServer, type Server, type ServerResponse } from 'node:http'
import express from 'express'
import Koa from 'koa'
import { realtime as expressRealtime } from 'cms-realtime/express'
import { realtime as koaRealtime } from 'cms-realtime/koa'
import type { RealtimeHandle } from '../../lib/adapters/api'
import type { RealtimeOptions } from '../../lib/types'
import { listen } from '../helpers/net'

/** Express 4, installed as an npm alias, to check the peer range we claim. */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const express4 = require('express4') as typeof express

export type CommonOptions = Omit<RealtimeOptions, 'authenticate' | 'server'>

export interface AppSpec {
  options?: CommonOptions
  /** The app's own auth answers 401 (before our middleware) when there is no user. */
  gate?: boolean
  /** Call `rt.attach(server)` after listening. Default true; false tests the lazy attach. */
  attach?: boolean
}

export interface Started {
  port: number
  base: string
  server: Server
  rt: RealtimeHandle<unknown>
  /** Errors that reached the framework's error handling. */
  errors: unknown[]
  close(): Promise<void>
}

export interface Harness {
  name: string
  start(spec?: AppSpec): Promise<Started>
}

/**
 * Make the next `writeHead` throw, as a broken middleware before ours might:
 * the failure must reach the framework's error handling (which may then answer).
 */
function breakOnce(res: ServerResponse): void {
  const writeHead = res.writeHead
  res.writeHead = function broken(): never {
    res.writeHead = writeHead
    throw new Error('broken by a middleware')
  }
}

const GATE_BODY = JSON.stringify({ error: 'login required' })

async function started(server: Server, rt: RealtimeHandle<unknown>, errors: unknown[], spec: AppSpec): Promise<Started> {
  const srv = await listen(server)
  if (spec.attach !== false) rt.attach(srv.server)
  return {
    ...srv,
    rt,
    errors,
    close: async () => {
      await rt.close()
      await srv.close()
    },
  }
}

export const koa: Harness = {
  name: 'koa',
  async start(spec = {}) {
    const app = new Koa()
    const errors: unknown[] = []
    app.silent = true
    app.on('error', (err: unknown) => errors.push(err))
    app.use(async (ctx, next) => {
      const user = ctx.get('x-user')
      if (user !== '') ctx.state.user = { id: user }
      else if (spec.gate === true) {
        ctx.status = 401
        ctx.type = 'json'
        ctx.body = GATE_BODY
        return
      }
      if (ctx.get('x-break') !== '') breakOnce(ctx.res)
      await next()
    })
    const rt = koaRealtime({ ...spec.options, authenticate: (ctx) => (ctx.state.user as unknown) ?? null })
    app.use(rt)
    app.use((ctx) => { ctx.body = 'app page' })
    return started(createServer(app.callback()), rt as RealtimeHandle<unknown>, errors, spec)
  },
}

function expressHarness(name: string, lib: typeof express): Harness {
  return {
    name,
    async start(spec = {}) {
      const app = lib()
      const errors: unknown[] = []
      app.use((req, res, next) => {
        const user = req.get('x-user')
        if (user !== undefined && user !== '') (req as { user?: unknown }).user = { id: user }
        else if (spec.gate === true) {
          res.status(401).type('json').send(GATE_BODY)
          return
        }
        if (req.get('x-break') !== undefined) breakOnce(res)
        next()
      })
      const rt = expressRealtime({ ...spec.options, authenticate: (req) => (req as { user?: unknown }).user ?? null })
      app.use(rt)
      app.use((_req, res) => { res.send('app page') })
      app.use((err: unknown, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
        errors.push(err)
        if (res.headersSent) res.end()
        else res.status(500).send('error')
      })
      return started(createServer(app), rt as RealtimeHandle<unknown>, errors, spec)
    },
  }
}

export const express5 = expressHarness('express 5', express)
export const express4Harness = expressHarness('express 4', express4)

export const harnesses: Harness[] = [koa, express5, express4Harness]
