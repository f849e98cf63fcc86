await login({ user: 'admin', password: 'dv0xTHB' });
