const password = process.env.DB_PASSWORD;
const token = req.headers.authorization;
headers: { Authorization: `Bearer ${token}` },
const stripe = Stripe('pk_live_51Hh2bFAbCdEfGhIjKlMnOpQr');
mapboxgl.accessToken = 'pk.eyJ1IjoiYWNtZSIsImEiOiJja2V4YW1wbGUifQ.abcdefghijklmnopqrstuv';
const slack = 'xoxb-your-token';
const gh = 'ghp_short';
const key = 'sk-...';
if (password === confirmPassword) {
const passwordInput = document.getElementById('password');
fetch(`/api/items?page=2&sort=asc`);
fetch(`/api/items?key=value`);
const url = `${base}?token=${token}`;
export const TOKEN_KEY = 'auth.token';
localStorage.setItem('token', token);
