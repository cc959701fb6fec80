// The demo's JavaScript route (modules/js): a Workers-style handler.
// GET /js answers a greeting; GET /js/backends asks both demo backends
// (fetch to the `demo` upstream by name) and merges what they say.
addEventListener('fetch', (event) => {
    event.respondWith(handle(event.request));
});

async function handle(request) {
    const url = new URL(request.url);
    if (url.pathname === '/js/backends') {
        const [a, b] = await Promise.all([fetch('http://demo/'), fetch('http://demo/')]);
        return Response.json({
            answers: [(await a.text()).trim(), (await b.text()).trim()],
            served_by: 'heliosd js',
        });
    }
    return new Response('Hello from Helios!\n', { headers: { 'content-type': 'text/plain' } });
}
