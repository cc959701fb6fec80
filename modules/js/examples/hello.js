// Hello world: the smallest handler.
addEventListener('fetch', (event) => {
    event.respondWith(new Response('Hello from Helios!'));
});
