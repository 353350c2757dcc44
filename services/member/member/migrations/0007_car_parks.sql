-- Car parks of a mall: the directory entry a car-park system's credential speaks for.
-- parking mirrors them (and their credentials) from the DIRECTORY bucket.
CREATE TABLE car_parks (
    mall_id     text NOT NULL REFERENCES malls,
    car_park_id text NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, car_park_id)
);

ALTER TABLE credentials
    ADD FOREIGN KEY (mall_id, car_park_id) REFERENCES car_parks;
