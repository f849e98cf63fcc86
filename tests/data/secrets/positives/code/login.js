await login({ user: 'admin', password: 'Akkl00' });
