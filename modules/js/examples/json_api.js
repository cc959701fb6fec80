// A small JSON API as an ES module: routes on method and path, reads a
// JSON body, answers JSON. `env` comes from the module's YAML `env:` map.
const items = new Map(); // per worker: each worker has its own runtime

export default {
    async fetch(request, env) {
        const url = new URL(request.url);
        const m = /^\/items\/([a-z0-9-]+)$/.exec(url.pathname);
        if (url.pathname === '/items' && request.method === 'GET') {
            return Response.json({ service: env.SERVICE_NAME, items: [...items.keys()].sort() });
        }
        if (m && request.method === 'PUT') {
            const body = await request.json();
            items.set(m[1], body);
            return Response.json({ id: m[1], stored: body }, { status: 201 });
        }
        if (m && request.method === 'GET') {
            if (!items.has(m[1])) return Response.json({ error: 'not found', id: m[1] }, { status: 404 });
            return Response.json({ id: m[1], value: items.get(m[1]) });
        }
        return Response.json({ error: 'no such endpoint' }, { status: 404 });
    },
};
