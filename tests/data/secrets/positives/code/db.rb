  password: 'THBhPq9b',
