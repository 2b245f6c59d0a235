/**
 * The mounting rule, checked where it can go wrong. Option `path` is the
 * absolute path the Node server sees, mount prefix included, and adapters
 * match on the original URL. A middleware mounted under a prefix that `path`
 * lacks (`app.use('/cms', realtime({ path: '/realtime' }))`) would never see
 * its own requests, and the browser would be told a URL nobody serves: when a
 * request reaches it that *would* be ours with the prefix stripped, we say so
 * loudly instead of passing it on to a 404.
 */
import { isOurs, pathnameOf } from '../server/http'

/**
 * A TypeError naming the fix when `url` (prefix stripped by a router or
 * koa-mount) is on our path but `originalUrl` is not; otherwise `undefined`.
 */
export function mountError(path: string, originalUrl: string, url: string): TypeError | undefined {
  if (url === originalUrl) return undefined
  const stripped = pathnameOf(url)
  if (!isOurs(stripped, path)) return undefined
  const original = pathnameOf(originalUrl)
  const prefix = original.endsWith(stripped) ? original.slice(0, original.length - stripped.length) : undefined
  // Correctly mounted (`path` starts with the prefix): a stray URL like
  // /cms/cms/realtime is simply not ours.
  if (prefix !== undefined && isOurs(path, prefix)) return undefined
  const wanted = prefix === undefined ? '<mount prefix>' + path : prefix + path
  return new TypeError(
    `cms-realtime: mounted under ${prefix === undefined ? 'a prefix' : JSON.stringify(prefix)} but option "path" is ` +
      `${JSON.stringify(path)}. "path" is the absolute path the server sees, mount prefix included: ` +
      `use { path: ${JSON.stringify(wanted)} } (see docs/mounting.md)`,
  )
}
