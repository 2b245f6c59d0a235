/**
 * `GET <path>/client.js`: the minified browser client, served by the
 * middleware itself (the way Socket.IO serves its client), so a CMS page
 * can `import { createClient } from '/realtime/client.js'` without a bundler.
 * The file is built by scripts/build-client.mjs into dist/ and read once.
 */
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { join } from 'node:path'

interface Asset {
  body: Buffer
  etag: string
}

/** In dist/, beside the compiled core (dist/server/ here), or dist/ beside lib/ when running from sources. */
const CANDIDATES = [join(__dirname, '..', 'client.min.js'), join(__dirname, '..', '..', 'dist', 'client.min.js')]

let asset: Promise<Asset | null> | undefined

function load(): Promise<Asset | null> {
  return (asset ??= (async () => {
    for (const file of CANDIDATES) {
      try {
        const body = await readFile(file)
        return { body, etag: `"${createHash('sha1').update(body).digest('base64url')}"` }
      } catch {
        // try the next place
      }
    }
    asset = undefined // built later (npm run build): look again next time
    return null
  })())
}

export async function serveClient(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const method = req.method ?? 'GET'
  if (method !== 'GET' && method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8' }).end('use GET')
    return
  }
  const a = await load()
  if (a === null) {
    res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' })
      .end('cms-realtime: the browser client is not built (npm run build writes dist/client.min.js)')
    return
  }
  // Revalidate every time: the bundle changes with the package version.
  const headers = { ETag: a.etag, 'Cache-Control': 'no-cache' }
  if (req.headers['if-none-match'] === a.etag) {
    res.writeHead(304, headers).end()
    return
  }
  res.writeHead(200, { ...headers, 'Content-Type': 'text/javascript; charset=utf-8', 'Content-Length': String(a.body.length) }).end(a.body)
}
