// Articles, live: the public browser client with a credentials hook. Strapi's
// admin authenticates with a short-lived bearer JWT (30 min) that a browser
// WebSocket cannot send. The `token` hook asks Strapi for a fresh one on every
// (re)connect (POST /admin/access-token, with the refresh cookie its login
// set), and the client trades it for a one-time ticket (POST /realtime/ticket),
// so the JWT never appears in a URL and a reconnect never uses an expired one.
import { createClient } from '/realtime/client.js'

const UID = 'api::article.article'
const $ = (id) => document.getElementById(id)
const articles = new Map() // documentId → { documentId, title, status }
let token = null

async function api(path, init = {}) {
  const r = await fetch(path, { ...init, headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}`, ...init.headers } })
  if (!r.ok) throw new Error(`${init.method ?? 'GET'} ${path}: ${r.status}`)
  return r.json()
}

function render() {
  const list = $('list')
  list.replaceChildren()
  if (articles.size === 0) list.innerHTML = '<li class="empty">No articles yet.</li>'
  for (const a of articles.values()) {
    const li = document.createElement('li')
    li.dataset.id = a.documentId
    if (a.flash) li.className = 'flash'
    a.flash = false
    const title = document.createElement('span')
    title.className = 'title'
    title.textContent = a.title ?? '(untitled)'
    const status = document.createElement('span')
    status.className = `status ${a.status}`
    status.textContent = a.status
    li.append(title, status)
    list.append(li)
  }
}

function onEvent(e) {
  const { documentId, title } = e.data
  if (e.type === 'deleted') articles.delete(documentId)
  else {
    const a = articles.get(documentId) ?? { documentId, status: 'draft' }
    if (title !== undefined) a.title = title
    if (e.type === 'published') a.status = 'published'
    if (e.type === 'unpublished' || e.type === 'created') a.status = 'draft'
    a.flash = true
    articles.set(documentId, a)
  }
  render()
}

async function load() {
  const { results } = await api(`/content-manager/collection-types/${UID}?page=1&pageSize=50&sort=updatedAt:DESC`)
  for (const r of results) {
    articles.set(r.documentId, { documentId: r.documentId, title: r.title, status: r.status ?? (r.publishedAt ? 'published' : 'draft') })
  }
  render()
}

/** A fresh admin access token from Strapi's refresh session, or null when signed out. */
async function freshToken() {
  const r = await fetch('/admin/access-token', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' })
  token = r.ok ? (await r.json()).data.token : null
  return token
}

const rt = createClient({ configUrl: '/realtime/config', token: freshToken })
rt.on('state', (s) => {
  $('state').dataset.state = s
  $('state').textContent = s
  if (s === 'live' || s === 'fallback') show(true)
})
rt.on('resync', () => void load()) // history could not cover a gap: read the list again
rt.on('signed-out', () => show(false))
rt.subscribe(`strapi:${UID}`, onEvent)

let shown = false
function show(signedIn) {
  $('login').hidden = signedIn
  $('articles').hidden = !signedIn
  if (signedIn && !shown) void load()
  shown = signedIn
}

$('login').addEventListener('submit', async (ev) => {
  ev.preventDefault()
  const form = new FormData(ev.target)
  const r = await fetch('/admin/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email: form.get('email'), password: form.get('password') }),
  })
  if (!r.ok) {
    $('login-error').hidden = false
    $('login-error').textContent = 'Sign-in failed.'
    return
  }
  rt.reconnect() // signed in: the token hook now gets a fresh access token
})

$('add').addEventListener('submit', async (ev) => {
  ev.preventDefault()
  const input = ev.target.elements.title
  await api(`/content-manager/collection-types/${UID}`, { method: 'POST', body: JSON.stringify({ title: input.value }) })
  input.value = '' // the list updates from the event, like everyone else's
})
