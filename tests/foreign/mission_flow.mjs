// A foreign OAuth client (npm oauth4webapi) walking missionbound's Level 1 flow end to end:
// discovery -> PAR (mission_intent, login_hint, PKCE S256, DPoP) -> /authorize -> /login ->
// consent -> callback (RFC 9207 iss) -> code grant (DPoP) -> refresh (rotation) -> introspection.
//
//   node mission_flow.mjs <issuer> [username [password]]
//
// Prints one JSON line per step on stdout ({"step": ...}); on any failure prints
// {"step": "error", ...} and a readable message on stderr, and exits 1. Every HTTP request
// has a timeout. The user interaction is plain fetch with manual redirects and cookies, the
// way any non-browser script drives the login and consent pages.

import * as oauth from 'oauth4webapi'

const REQUEST_TIMEOUT_MS = 10_000
const CLIENT_ID = 'demo-agent'
const CLIENT_SECRET = 'demo-agent-secret' // DEMO SECRET (demo tenant)
const RS_CLIENT_ID = 'demo-rs'
const RS_CLIENT_SECRET = 'demo-rs-secret' // DEMO SECRET (demo tenant)
const REDIRECT_URI = 'http://127.0.0.1:8765/callback' // never contacted: we read the 303
const PURPOSE = 'https://missionbound.dev/purposes/accounts-payable'

class FlowError extends Error {
  constructor(step, message, details = {}) {
    super(message)
    this.step = step
    this.details = details
  }
}

let currentStep = 'start'

function emit(step, fields = {}) {
  process.stdout.write(JSON.stringify({ step, ...fields }) + '\n')
}

function check(condition, message, details = {}) {
  if (!condition) throw new FlowError(currentStep, message, details)
}

// -- small helpers ---------------------------------------------------------------------------

// Every oauth4webapi request: a timeout, and plain http allowed because the server under test
// is http://127.0.0.1 (the library refuses non-https otherwise).
function httpOptions(extra = {}) {
  return {
    ...extra,
    signal: () => AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    [oauth.allowInsecureRequests]: true,
  }
}

// Retries once when the server asks for a DPoP nonce (RFC 9449 section 8): the DPoP handle
// has cached the nonce from the refusing response, so the second proof carries it.
async function withDpopNonceRetry(attempt) {
  try {
    return { result: await attempt(), nonceRetries: 0 }
  } catch (err) {
    if (!oauth.isDPoPNonceError(err)) throw err
    return { result: await attempt(), nonceRetries: 1 }
  }
}

function decodeJwtPayload(jwt) {
  const parts = jwt.split('.')
  check(parts.length === 3, 'access token is not a compact JWS (RFC 9068)', { parts: parts.length })
  const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'))
  const payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'))
  return { header, payload }
}

function missionIntent(issuer) {
  // As examples/preview_mission.py demo_intent: the demo scenario, expiring in three days.
  const expiry = new Date(Date.now() + 3 * 24 * 3600 * 1000)
  expiry.setUTCMilliseconds(0)
  return JSON.stringify({
    goal: 'Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per invoice, by Friday.',
    resources: [`${issuer}/demo/erp`, `${issuer}/demo/mcp`],
    constraints: ['only Q3 invoices', 'pay approved vendors only'],
    purpose: PURPOSE,
    mission_expiry: expiry.toISOString().replace('.000Z', 'Z'),
    context: {
      max_derivations: 50,
      max_value: { amount: '500.00', currency: 'USD' },
      vendors: ['acme'],
    },
  })
}

// -- the browser part, by hand ---------------------------------------------------------------

class CookieJar {
  #cookies = new Map()

  store(response) {
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';')
      const at = pair.indexOf('=')
      if (at > 0) this.#cookies.set(pair.slice(0, at).trim(), pair.slice(at + 1).trim())
    }
  }

  has(name) {
    return this.#cookies.has(name)
  }

  header() {
    return [...this.#cookies].map(([name, value]) => `${name}=${value}`).join('; ')
  }
}

async function browse(jar, url, { method = 'GET', form } = {}) {
  const headers = { accept: 'text/html' }
  if (jar.header()) headers.cookie = jar.header()
  let body
  if (form) {
    headers['content-type'] = 'application/x-www-form-urlencoded'
    body = new URLSearchParams(form).toString()
  }
  const response = await fetch(url, {
    method,
    headers,
    body,
    redirect: 'manual',
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  })
  jar.store(response)
  const text = await response.text()
  const location = response.headers.get('location')
  if (response.status >= 300 && response.status < 400) {
    check(location !== null, `${method} ${url}: ${response.status} without a Location header`)
  }
  return {
    status: response.status,
    location: location === null ? null : new URL(location, url).href,
    rawLocation: location,
    text,
  }
}

function htmlUnescape(value) {
  return value
    .replace(/&quot;/g, '"')
    .replace(/&#x27;|&#39;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&#(\d+);/g, (_, code) => String.fromCodePoint(Number(code)))
    .replace(/&#x([0-9a-f]+);/gi, (_, code) => String.fromCodePoint(parseInt(code, 16)))
    .replace(/&amp;/g, '&')
}

function attributes(tag) {
  const found = {}
  for (const match of tag.matchAll(/([^\s=/<>"']+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?/g)) {
    const name = match[1].toLowerCase()
    if (!(name in found)) found[name] = htmlUnescape(match[2] ?? match[3] ?? match[4] ?? '')
  }
  return found
}

// The forms of a page: action, method, and the hidden inputs of each (a tiny parser, enough
// for server-rendered pages; tests/e2e_support.py parse_form is its Python twin).
function parseForms(html) {
  const forms = []
  for (const match of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form\s*>/gi)) {
    const form = attributes(match[1])
    const hidden = {}
    const buttons = []
    for (const input of match[2].matchAll(/<(input|button)\b([^>]*)>/gi)) {
      const attrs = attributes(input[2])
      const type = (attrs.type ?? (input[1].toLowerCase() === 'button' ? 'submit' : 'text')).toLowerCase()
      if (type === 'hidden' && attrs.name) hidden[attrs.name] = attrs.value ?? ''
      if (type === 'submit' && attrs.name) buttons.push({ name: attrs.name, value: attrs.value ?? '' })
    }
    forms.push({ action: form.action ?? '', method: (form.method ?? 'get').toUpperCase(), hidden, buttons })
  }
  return forms
}

function onlyForm(page, what) {
  const forms = parseForms(page.text)
  check(forms.length === 1, `${what}: expected exactly one <form>, found ${forms.length}`, {
    status: page.status,
    body: page.text.slice(0, 500),
  })
  return forms[0]
}

// -- the flow ----------------------------------------------------------------------------------

async function main(argv) {
  const [issuerArg, username = 'alice', password = username] = argv
  if (!issuerArg) {
    throw new FlowError('start', 'usage: node mission_flow.mjs <issuer> [username [password]]')
  }
  const issuer = new URL(issuerArg)
  const issuerId = issuerArg.replace(/\/$/, '')

  // 1. Discovery (RFC 8414): the library checks that the metadata's issuer is ours.
  currentStep = 'discovery'
  const as = await oauth.processDiscoveryResponse(
    issuer,
    await oauth.discoveryRequest(issuer, httpOptions({ algorithm: 'oauth2' })),
  )
  emit('discovery', { issuer: as.issuer })

  currentStep = 'metadata'
  const needed = [
    'pushed_authorization_request_endpoint',
    'authorization_endpoint',
    'token_endpoint',
    'introspection_endpoint',
  ]
  const missing = needed.filter((member) => typeof as[member] !== 'string')
  check(missing.length === 0, `metadata lacks ${missing.join(', ')}`, { missing })
  check(
    (as.code_challenge_methods_supported ?? []).includes('S256'),
    'metadata code_challenge_methods_supported must list S256',
    { code_challenge_methods_supported: as.code_challenge_methods_supported },
  )
  check(
    (as.dpop_signing_alg_values_supported ?? []).includes('ES256'),
    'metadata dpop_signing_alg_values_supported must list ES256',
    { dpop_signing_alg_values_supported: as.dpop_signing_alg_values_supported },
  )
  check(
    as.authorization_response_iss_parameter_supported === true,
    'metadata must advertise authorization_response_iss_parameter_supported: true (RFC 9207)',
  )
  emit('metadata', {
    endpoints: Object.fromEntries(needed.map((member) => [member, as[member]])),
    mission_bound_authorization_supported: as.mission_bound_authorization_supported ?? null,
  })

  const client = { client_id: CLIENT_ID }
  const clientAuth = oauth.ClientSecretBasic(CLIENT_SECRET)
  const keyPair = await oauth.generateKeyPair('ES256')
  const dpop = oauth.DPoP(client, keyPair)
  const jkt = await dpop.calculateThumbprint()

  // 2. PAR (RFC 9126) with PKCE S256 (RFC 7636) and a DPoP proof (RFC 9449 section 10).
  currentStep = 'par'
  const codeVerifier = oauth.generateRandomCodeVerifier()
  const codeChallenge = await oauth.calculatePKCECodeChallenge(codeVerifier)
  const state = oauth.generateRandomState()
  const parParameters = new URLSearchParams({
    response_type: 'code',
    redirect_uri: REDIRECT_URI,
    code_challenge: codeChallenge,
    code_challenge_method: 'S256',
    state,
    dpop_jkt: jkt,
    mission_intent: missionIntent(issuerId),
    login_hint: username,
  })
  const par = await withDpopNonceRetry(async () =>
    oauth.processPushedAuthorizationResponse(
      as,
      client,
      await oauth.pushedAuthorizationRequest(as, client, clientAuth, parParameters, httpOptions({ DPoP: dpop })),
    ),
  )
  const { request_uri: requestUri, expires_in: parExpiresIn } = par.result
  check(requestUri.startsWith('urn:ietf:params:oauth:request_uri:'), 'request_uri has the wrong form', { requestUri })
  emit('par', { request_uri: requestUri, expires_in: parExpiresIn, dpop_nonce_retries: par.nonceRetries, jkt })

  // 3. The front channel by hand: /authorize -> /login -> consent -> 303 to redirect_uri.
  const jar = new CookieJar()
  const authorizeUrl = new URL(as.authorization_endpoint)
  authorizeUrl.searchParams.set('client_id', CLIENT_ID)
  authorizeUrl.searchParams.set('request_uri', requestUri)

  currentStep = 'authorize'
  const unauthenticated = await browse(jar, authorizeUrl.href)
  check(unauthenticated.status === 303, `GET /authorize without a session: expected 303, got ${unauthenticated.status}`, {
    body: unauthenticated.text.slice(0, 500),
  })
  const loginUrl = new URL(unauthenticated.location)
  check(loginUrl.pathname.endsWith('/login'), 'GET /authorize did not send us to /login', {
    location: unauthenticated.rawLocation,
  })
  emit('authorize', { status: unauthenticated.status, location: unauthenticated.rawLocation })

  currentStep = 'login'
  const loginPage = await browse(jar, loginUrl.href)
  check(loginPage.status === 200, `GET /login: expected 200, got ${loginPage.status}`)
  check(jar.has('mb_session'), 'GET /login did not set the mb_session cookie')
  const loginForm = onlyForm(loginPage, 'login page')
  check('csrf_token' in loginForm.hidden, 'login form has no hidden csrf_token', { hidden: Object.keys(loginForm.hidden) })
  const loggedIn = await browse(jar, new URL(loginForm.action || loginUrl.href, loginUrl).href, {
    method: loginForm.method,
    form: { ...loginForm.hidden, username, password },
  })
  check(loggedIn.status === 303, `POST /login: expected 303, got ${loggedIn.status}`, {
    body: loggedIn.text.slice(0, 500),
  })
  emit('login', { status: loggedIn.status, location: loggedIn.rawLocation, username })

  currentStep = 'consent_page'
  const consentPage = await browse(jar, loggedIn.location)
  check(consentPage.status === 200, `GET /authorize signed in: expected 200 (consent page), got ${consentPage.status}`, {
    location: consentPage.rawLocation,
    body: consentPage.text.slice(0, 500),
  })
  const consentForm = onlyForm(consentPage, 'consent page')
  const decisions = consentForm.buttons.filter((button) => button.name === 'decision').map((button) => button.value)
  check(
    decisions.includes('approve') && decisions.includes('reject'),
    'consent form needs decision=approve and decision=reject buttons',
    { buttons: consentForm.buttons },
  )
  check('csrf_token' in consentForm.hidden, 'consent form has no hidden csrf_token', { hidden: Object.keys(consentForm.hidden) })
  emit('consent_page', { action: consentForm.action, hidden: Object.keys(consentForm.hidden).sort() })

  currentStep = 'consent'
  const approved = await browse(jar, new URL(consentForm.action || loggedIn.location, loggedIn.location).href, {
    method: consentForm.method,
    form: { ...consentForm.hidden, decision: 'approve' },
  })
  check(approved.status === 303, `POST consent: expected 303, got ${approved.status}`, {
    body: approved.text.slice(0, 500),
  })
  check(approved.location.startsWith(`${REDIRECT_URI}?`), 'consent did not redirect to the registered redirect_uri', {
    location: approved.rawLocation,
  })
  emit('consent', { status: approved.status })

  // 4. The authorization response: state and RFC 9207 iss, checked by the library. The AS
  // advertises iss support (checked above), so the library refuses a response without it.
  currentStep = 'callback'
  const callback = new URL(approved.location)
  check(callback.searchParams.get('iss') === as.issuer, 'authorization response iss is missing or not the issuer', {
    iss: callback.searchParams.get('iss'),
  })
  const callbackParameters = oauth.validateAuthResponse(as, client, callback, state)
  emit('callback', { iss: callback.searchParams.get('iss'), state_ok: true })

  // 5. Code grant with the PKCE verifier, DPoP-bound.
  currentStep = 'token'
  let rawTokenResponse
  const granted = await withDpopNonceRetry(async () => {
    const response = await oauth.authorizationCodeGrantRequest(
      as,
      client,
      clientAuth,
      callbackParameters,
      REDIRECT_URI,
      codeVerifier,
      httpOptions({ DPoP: dpop }),
    )
    rawTokenResponse = response.clone()
    return oauth.processAuthorizationCodeResponse(as, client, response)
  })
  const tokens = granted.result
  const rawTokens = await rawTokenResponse.json()
  check(rawTokens.token_type === 'DPoP', `token_type must be "DPoP", got ${JSON.stringify(rawTokens.token_type)}`)
  check(
    Array.isArray(tokens.authorization_details) && tokens.authorization_details.length > 0,
    'token response carries no authorization_details',
  )
  check(
    tokens.authorization_details.every((detail) => detail.type === 'mission_resource_access'),
    'authorization_details entries must be of type mission_resource_access',
    { authorization_details: tokens.authorization_details },
  )
  check(typeof tokens.refresh_token === 'string', 'token response carries no refresh_token')
  check(typeof tokens.mission_id === 'string', 'token response carries no mission_id')
  emit('token', {
    token_type: rawTokens.token_type,
    expires_in: tokens.expires_in,
    mission_id: tokens.mission_id,
    authorization_details: tokens.authorization_details.length,
    dpop_nonce_retries: granted.nonceRetries,
  })

  currentStep = 'access_token'
  const { header, payload } = decodeJwtPayload(tokens.access_token)
  check(header.typ === 'at+jwt', `access token typ must be at+jwt, got ${JSON.stringify(header.typ)}`)
  check(payload.iss === as.issuer, 'access token iss is not the issuer', { iss: payload.iss })
  check(payload.client_id === CLIENT_ID, 'access token client_id is not the client', { client_id: payload.client_id })
  check(typeof payload.mission?.id === 'string', 'access token has no mission.id', { mission: payload.mission })
  check(payload.mission.id === tokens.mission_id, 'access token mission.id differs from the response mission_id')
  check(payload.mission.origin === as.issuer, 'access token mission.origin is not the issuer', { mission: payload.mission })
  check(payload.cnf?.jkt === jkt, 'access token cnf.jkt is not our DPoP key thumbprint', { cnf: payload.cnf, jkt })
  emit('access_token', { mission: payload.mission, sub: payload.sub, aud: payload.aud, cnf_jkt: payload.cnf.jkt })

  // 6. Refresh: rotated, still DPoP-bound, still the same Mission.
  currentStep = 'refresh'
  let rawRefreshResponse
  const refreshed = await withDpopNonceRetry(async () => {
    const response = await oauth.refreshTokenGrantRequest(
      as,
      client,
      clientAuth,
      tokens.refresh_token,
      httpOptions({ DPoP: dpop }),
    )
    rawRefreshResponse = response.clone()
    return oauth.processRefreshTokenResponse(as, client, response)
  })
  const renewed = refreshed.result
  const rawRenewed = await rawRefreshResponse.json()
  check(rawRenewed.token_type === 'DPoP', `refreshed token_type must be "DPoP", got ${JSON.stringify(rawRenewed.token_type)}`)
  check(typeof renewed.refresh_token === 'string', 'refresh response carries no new refresh_token')
  check(renewed.refresh_token !== tokens.refresh_token, 'refresh token was not rotated')
  const renewedPayload = decodeJwtPayload(renewed.access_token).payload
  check(renewedPayload.mission?.id === payload.mission.id, 'refreshed access token names another Mission', {
    mission: renewedPayload.mission,
  })
  check(renewedPayload.cnf?.jkt === jkt, 'refreshed access token is not bound to our DPoP key', { cnf: renewedPayload.cnf })
  emit('refresh', { rotated: true, mission_id: renewedPayload.mission.id, dpop_nonce_retries: refreshed.nonceRetries })

  // 7. Introspection as the demo Resource Servers' credential (RFC 7662).
  currentStep = 'introspect'
  const rs = { client_id: RS_CLIENT_ID }
  const introspection = await oauth.processIntrospectionResponse(
    as,
    rs,
    await oauth.introspectionRequest(as, rs, oauth.ClientSecretBasic(RS_CLIENT_SECRET), renewed.access_token, httpOptions()),
  )
  check(introspection.active === true, 'introspection says the token is not active', { introspection })
  check(introspection.mission?.state === 'active', 'introspection mission.state is not "active"', {
    mission: introspection.mission,
  })
  check(introspection.mission?.id === payload.mission.id, 'introspection names another Mission', {
    mission: introspection.mission,
  })
  emit('introspect', { active: introspection.active, mission_state: introspection.mission.state })

  currentStep = 'done'
  emit('done', { mission_id: payload.mission.id })
}

function describe(err) {
  const details = { name: err?.name, message: err?.message }
  if (err instanceof FlowError) Object.assign(details, err.details)
  if (err instanceof oauth.ResponseBodyError) {
    Object.assign(details, {
      status: err.status,
      error: err.error,
      error_description: err.error_description,
      body: err.cause,
    })
  } else if (err instanceof oauth.WWWAuthenticateChallengeError) {
    Object.assign(details, { status: err.status, challenges: err.cause })
  } else if (err instanceof oauth.AuthorizationResponseError) {
    Object.assign(details, { error: err.error, error_description: err.error_description })
  } else if (err?.code) {
    details.code = err.code
    if (err.cause !== undefined && !(err.cause instanceof Response)) details.cause = String(err.cause?.message ?? err.cause)
    if (err.cause instanceof Response) details.status = err.cause.status
  }
  return details
}

try {
  await main(process.argv.slice(2))
} catch (err) {
  const step = err instanceof FlowError ? err.step : currentStep
  const details = describe(err)
  emit('error', { failed_step: step, ...details })
  process.stderr.write(`mission_flow: FAILED at step "${step}": ${details.message}\n`)
  if (!(err instanceof FlowError) && err?.stack) process.stderr.write(`${err.stack}\n`)
  process.exitCode = 1
}
