DROP TABLE users;
DROP TABLE events;
DROP TABLE messages;
DROP TABLE pools;
DROP TABLE bots;
