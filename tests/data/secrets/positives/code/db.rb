  password: 'ELlh4B',
