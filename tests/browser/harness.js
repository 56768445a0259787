// Evaluated in a page of the wsd origin by tests/browser: loads the real /wsd.js as an ES module and
// records what an app would see — messages per channel and every client event — in window.harness.
window.harness = {
  events: [],
  messages: {},
  client: null,
  module: null,

  tokenFetches: 0,

  async start(url, channels, options) {
    this.module = await import("/wsd.js");
    if (options.tokenUrl) {
      // The app's backend: fresh tokens from the token server (options are JSON: no functions).
      const tokenUrl = options.tokenUrl;
      delete options.tokenUrl;
      options.getToken = async () => {
        this.tokenFetches += 1;
        const response = await fetch(tokenUrl);
        if (!response.ok) throw new Error(`token server: ${response.status}`);
        return (await response.text()).trim();
      };
    }
    const client = this.module.connect(url, options);
    this.client = client;
    for (const type of ["connecting", "open", "closed", "subscribed", "resumed", "gap", "error",
                        "authenticated", "unauthorized", "forbidden"]) {
      client.addEventListener(type, (event) => {
        const detail = { ...event.detail };
        if (type === "resumed") detail.channels = detail.channels.map((c) => ({ ...c }));
        this.events.push({ type, at: performance.now(), ...detail });
      });
    }
    const ready = channels.map((channel) => {
      this.messages[channel] = [];
      return client.subscribe(channel, (data, meta) =>
        this.messages[channel].push({ off: meta.off, epoch: meta.epoch, data, from: meta.from }));
    });
    return Promise.all(ready);
  },

  eventTypes() {
    return this.events.map((event) => event.type);
  },
};
