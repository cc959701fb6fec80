// heliosd serve examples/hello.js --port 8080
export default {
  fetch(request, env, ctx) {
    return new Response('Hello from Helios!');
  },
};
