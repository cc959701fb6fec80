// Middleware: the route has both `handler:` (this script) and `upstream:`.
// The request goes to the route's own upstream with a header added and one
// removed; the response comes back with a header added.
export default {
    async fetch(request) {
        const headers = new Headers(request.headers);
        headers.set('X-Edge', 'helios-js');
        headers.delete('X-Internal-Secret');
        const response = await fetch(new Request(request, { headers }));
        const out = new Response(response.body, response);
        out.headers.set('X-Rewritten', 'yes');
        out.headers.delete('Server');
        return out;
    },
};
