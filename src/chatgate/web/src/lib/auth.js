// The key lives in this tab's sessionStorage only: never in a URL, a cookie or localStorage.
const KEY = "chatgate.key";

export const credentials = {
  key: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};
