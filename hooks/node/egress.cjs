'use strict';
/*
 * agentsup: node's built-in fetch goes through the egress proxy.
 *
 * Loaded into every node process of an agent whose only way out is the
 * egress proxy (NODE_OPTIONS=--require, set by agentsup).  Node 20 and 22's
 * fetch (undici) ignores HTTP(S)_PROXY, and its ProxyAgent is not public, so
 * this installs a global dispatcher that sends https:// origins through a
 * CONNECT tunnel and http:// requests in absolute form to the proxy named by
 * http(s)_proxy, and leaves NO_PROXY hosts direct.  Newer nodes do the same
 * themselves under NODE_USE_ENV_PROXY=1 (also set); then this does nothing.
 *
 * Convenience only, not enforcement: the agent's network namespace has no
 * route out, so a fetch this misses (or an agent that undoes it) fails to
 * connect at all.  Hence any failure here leaves node as it was.
 */
(function installEgressDispatcher() {
  const DISPATCHER = Symbol.for('undici.globalDispatcher.1');
  const MAX_HEAD = 64 * 1024;
  let net, tls;
  try {
    net = require('net');
    tls = require('tls');
  } catch {
    return;
  }

  function proxyFrom(...names) {
    for (const name of names) {
      const value = process.env[name];
      if (!value) continue;
      try {
        const url = new URL(value.includes('://') ? value : `http://${value}`);
        if (url.protocol !== 'http:') return null; // only a plain-HTTP proxy is spoken here
        return url;
      } catch {
        return null;
      }
    }
    return null;
  }
  // As undici's EnvHttpProxyAgent reads them: https falls back to the http proxy.
  const httpProxy = proxyFrom('http_proxy', 'HTTP_PROXY');
  const httpsProxy = proxyFrom('https_proxy', 'HTTPS_PROXY') || httpProxy;
  if (!httpsProxy && !httpProxy) return;
  if (typeof globalThis.fetch !== 'function') return; // --no-experimental-fetch

  // Reading a lazy undici global loads node's bundled undici, which installs
  // its default Agent as the global dispatcher: its class is ours to use.
  try {
    void globalThis.Headers;
  } catch {
    return;
  }
  const current = globalThis[DISPATCHER];
  if (!current || current.constructor.name !== 'Agent') return; // node's own proxy agent, or the user's
  const Agent = current.constructor;
  let Base = Object.getPrototypeOf(Agent);
  while (Base && Base.name !== 'Dispatcher') Base = Object.getPrototypeOf(Base);
  if (typeof Base !== 'function') Base = require('events').EventEmitter;

  function bare(host) {
    return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  }

  // NO_PROXY as curl reads it: `*`, names (their subdomains too), `.suffix`,
  // `*.suffix`, IP literals, each with an optional `:port`.
  const noProxy = (process.env.no_proxy || process.env.NO_PROXY || '')
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((entry) => {
      const text = entry.toLowerCase();
      const found = /^\[([^\]]+)\](?::(\d+))?$/.exec(text) || /^([^:]+):(\d+)$/.exec(text);
      const name = found ? found[1] : text;
      return { name: name === '*' ? name : name.replace(/^\*\./, '.'), port: found?.[2] || '' };
    });

  function direct(url) {
    const host = bare(url.hostname.toLowerCase());
    const port = url.port || (url.protocol === 'https:' ? '443' : '80');
    return noProxy.some(({ name, port: only }) => {
      if (only && only !== port) return false;
      if (name === '*') return true;
      if (name.startsWith('.')) return host.endsWith(name) || host === name.slice(1);
      return host === name || host.endsWith(`.${name}`);
    });
  }

  function authorityOf(host, port) {
    const name = bare(host);
    return net.isIPv6(name) ? `[${name}]:${port}` : `${name}:${port}`;
  }

  // undici's connect hook: a socket to the proxy, CONNECT host:port, then TLS
  // inside the tunnel with the SNI the proxy checks against the CONNECT host.
  function tunnel(opts, callback) {
    const host = bare(opts.hostname || opts.host);
    const port = Number(opts.port) || 443;
    const authority = authorityOf(host, port);
    const socket = net.connect({ host: bare(httpsProxy.hostname), port: Number(httpsProxy.port) || 80 });
    socket.setNoDelay(true); // as undici's own connector: requests are small writes
    let head = Buffer.alloc(0);
    let settled = false;
    function fail(error) {
      if (settled) return;
      settled = true;
      socket.destroy();
      callback(error);
    }
    function onClose() {
      fail(new Error(`egress proxy closed the connection before answering CONNECT ${authority}`));
    }
    function onData(chunk) {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > MAX_HEAD) fail(new Error('egress proxy answer too long'));
        return;
      }
      socket.removeListener('data', onData);
      socket.removeListener('close', onClose);
      socket.removeListener('error', fail);
      socket.pause();
      const statusLine = head.subarray(0, end).toString('latin1').split('\r\n', 1)[0];
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
      if (!status || status[1] !== '200') {
        const error = new Error(`egress proxy refused CONNECT ${authority}: ${statusLine}`);
        error.code = 'UND_ERR_PROXY_REFUSED';
        error.statusCode = status ? Number(status[1]) : 0;
        fail(error);
        return;
      }
      const rest = head.subarray(end + 4);
      if (rest.length) socket.unshift(rest);
      const secure = tls.connect({
        socket,
        servername: net.isIP(host) ? undefined : opts.servername || host,
        ALPNProtocols: ['http/1.1'],
      });
      function tlsFailed(error) {
        secure.destroy();
        fail(error);
      }
      secure.once('error', tlsFailed);
      secure.once('secureConnect', () => {
        secure.removeListener('error', tlsFailed);
        settled = true;
        callback(null, secure);
      });
    }
    socket.once('error', fail);
    socket.once('close', onClose);
    socket.on('data', onData);
    socket.once('connect', () => {
      socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
    });
  }

  // A plain HTTP request to the proxy in absolute form, Host kept; one per
  // connection, as the proxy closes each after its answer.
  function absoluteForm(opts, url) {
    const headers = [];
    const given = opts.headers;
    if (Array.isArray(given)) {
      if (given.length && Array.isArray(given[0])) {
        for (const [name, value] of given) headers.push(name, value);
      } else {
        headers.push(...given);
      }
    } else if (given && typeof given === 'object') {
      for (const [name, value] of Object.entries(given)) headers.push(name, value);
    }
    const kept = [];
    for (let i = 0; i < headers.length; i += 2) {
      const name = String(headers[i]).toLowerCase();
      if (name !== 'host' && name !== 'connection') kept.push(headers[i], headers[i + 1]);
    }
    kept.push('host', url.host, 'connection', 'close');
    return { ...opts, origin: httpProxy.origin, path: url.origin + (opts.path || '/'), headers: kept };
  }

  class EgressDispatcher extends Base {
    constructor() {
      super();
      this.directAgent = current;
      this.tunnelAgent = new Agent({ connect: tunnel });
      this.forwardAgent = new Agent();
    }

    dispatch(opts, handler) {
      const url = new URL(String(opts.origin));
      if (url.protocol === 'https:' && httpsProxy && !direct(url)) {
        return this.tunnelAgent.dispatch(opts, handler);
      }
      // A plain-HTTP upgrade or CONNECT is left direct: the proxy relays
      // requests, not raw streams, so it fails to connect like any way around.
      if (url.protocol === 'http:' && httpProxy && !direct(url) && !opts.upgrade) {
        if (opts.method !== 'CONNECT') {
          return this.forwardAgent.dispatch(absoluteForm(opts, url), handler);
        }
      }
      return this.directAgent.dispatch(opts, handler);
    }

    close(...args) {
      return this.each('close', args);
    }

    destroy(...args) {
      return this.each('destroy', args);
    }

    each(method, args) {
      const callback = typeof args[args.length - 1] === 'function' ? args.pop() : null;
      const agents = [this.directAgent, this.tunnelAgent, this.forwardAgent];
      const done = Promise.all(agents.map((agent) => agent[method](...args))).then(() => {});
      if (!callback) return done;
      done.then(() => callback(null), callback);
      return undefined;
    }
  }

  try {
    globalThis[DISPATCHER] = new EgressDispatcher();
  } catch {
    // leave node's own dispatcher: the namespace still refuses a direct connect
  }
})();
