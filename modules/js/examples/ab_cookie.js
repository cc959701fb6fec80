// A/B routing by cookie: users with `ab=b` go to the upstream named `beta`,
// everyone else to `stable`; new visitors are assigned a group at random
// and get the cookie.
function cookie(request, name) {
    const header = request.headers.get('Cookie') || '';
    for (const part of header.split(';')) {
        const [k, ...v] = part.trim().split('=');
        if (k === name) return v.join('=');
    }
    return null;
}

addEventListener('fetch', (event) => {
    event.respondWith(route(event.request));
});

async function route(request) {
    let group = cookie(request, 'ab');
    const assign = group !== 'a' && group !== 'b';
    if (assign) group = crypto.getRandomValues(new Uint8Array(1))[0] < 128 ? 'a' : 'b';
    const url = new URL(request.url);
    const upstream = group === 'b' ? 'beta' : 'stable';
    const response = await fetch(`http://${upstream}${url.pathname}${url.search}`, {
        method: request.method,
        headers: request.headers,
    });
    const out = new Response(response.body, response);
    out.headers.set('X-AB-Group', group);
    if (assign) out.headers.append('Set-Cookie', `ab=${group}; Path=/; Max-Age=86400`);
    return out;
}
